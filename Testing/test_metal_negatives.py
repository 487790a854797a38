"""Metal that is not calcium: the phantom's per-frame metal footprint, the per-patch flag and the
hard-negative draw weight (``TrainConfig.metal_negative_weight``).

The footprint is checked against an independent reference: the same acquisition rendered without
metal (metal has its own random stream, so everything else, noise included, is identical), whose
difference from the frames with metal is exactly where the metal darkens the image.
"""

import numpy as np
import pytest
from CACIdentifierLib.errors import CacError
from CACTrainerLib import dataset as D
from CACTrainerLib.phantom import PhantomParams, generate_acquisition
from CACTrainerLib.phantom_domain import randomized_params
from scipy import ndimage as ndi


def _with_and_without_metal(seed):
    p = randomized_params(np.random.default_rng(seed), n_frames=8, size=256)
    p.metal_prob, p.display = 1.0, "log"
    a = generate_acquisition(p, seed=seed, patient=1, calcium_free=True)
    b = generate_acquisition(PhantomParams(**{**p.__dict__, "metal_prob": 0.0}), seed=seed, patient=1,
                             calcium_free=True)
    return a, b


@pytest.mark.parametrize("seed", [0, 1])  # 0: clips and stents on the heart; 1: sternal wires too
def test_metal_footprint_is_where_the_metal_darkens_the_frame(seed):
    a, b = _with_and_without_metal(seed)
    assert b.metal is None and a.metal is not None and a.metal.shape == a.frames.shape
    assert a.truth["metal"]["sternal_wires"] == (seed == 1)
    darkening = (b.frames.astype(float) - a.frames.astype(float)) / float(a.frames.max())
    near = np.stack([ndi.binary_dilation(m, iterations=2) for m in a.metal])  # the detector blurs
    strong = darkening > 0.03
    assert strong.sum() > 50
    assert (strong & near).sum() / strong.sum() > 0.99  # what the metal darkens is in its footprint
    assert darkening[a.metal].mean() > 0.1  # and the footprint is darkened
    assert np.abs(darkening[~near]).max() < 0.03
    # The footprint moves: clips ride on the heart, wires with respiration.
    assert not all(np.array_equal(a.metal[0], m) for m in a.metal[1:])


def test_metal_patches_flagged_in_the_frameset():
    a, b = _with_and_without_metal(1)
    pairs = [(k, k) for k in range(4)]  # the pairing does not matter here
    fs = D.frames_from_acquisition(a, pairs=pairs, frames_per_acquisition=None, onset=None)
    clean = D.frames_from_acquisition(b, pairs=pairs, frames_per_acquisition=None, onset=None)
    assert fs.metal.shape == (4, 5) and fs.metal.dtype == bool
    assert fs.metal.any() and not clean.metal.any()
    from CACIdentifierLib.patches import patch_origins

    for i in range(4):
        expect = D._patches_touching(a.metal[i], patch_origins())
        assert np.array_equal(fs.metal[i], expect)
    # It travels with subset and concat like every other per-frame field.
    both = D.FrameSet.concat([clean, fs])
    assert np.array_equal(both.metal, np.concatenate([clean.metal, fs.metal]))
    assert np.array_equal(both.subset([5, 6]).metal, fs.metal[1:3])


def test_patches_touching_by_hand():
    from CACIdentifierLib.patches import patch_origins

    origins = patch_origins()  # 256 px patches at the corners and the centre of 512
    m = np.zeros((512, 512), bool)
    m[300, 300] = True  # bottom-right corner patch and the centre one
    assert D._patches_touching(m, origins).tolist() == [False, False, False, True, True]
    thin = np.zeros((1024, 1024), bool)
    thin[:, 5] = True  # a one-pixel wire at twice the size still counts after resizing
    assert D._patches_touching(thin, origins).tolist() == [True, False, True, False, False]


def _fake_set(n_frames, metal_rows):
    labels = np.zeros((n_frames, 5), np.float32)
    labels[: n_frames // 4] = 1.0
    metal = np.zeros((n_frames, 5), bool)
    metal[metal_rows] = True
    z = np.zeros((n_frames, 1, 1), np.float16)
    return D.FrameSet(z, z, z.astype(bool), z.astype(bool), labels, np.full((n_frames, 2), 0.3),
                      np.arange(n_frames), np.arange(n_frames), metal, z, ["a"] * n_frames, ["p"] * n_frames)


def test_metal_weight_steers_the_hard_negative_draw():
    from CACTrainerLib.training import TrainConfig, _epoch_batches

    fs = _fake_set(400, slice(300, 340))  # 200 of 1,500 negative patches hold metal
    scores = np.ones(fs.n_patches, np.float32)
    neg_metal = (fs.patch_labels == 0) & fs.metal.reshape(-1)

    def share(weight, seed):
        cfg = TrainConfig(hard_negative_frac=1.0, metal_negative_weight=weight, batch_size=32)
        ids = np.concatenate(_epoch_batches(fs, cfg, np.random.default_rng(seed), scores.copy()))
        neg = ids[fs.patch_labels[ids] == 0]
        return neg_metal[neg].mean(), ids

    plain = np.mean([share(1.0, s)[0] for s in range(5)])
    weighted = np.mean([share(4.0, s)[0] for s in range(5)])
    # Without replacement, a weight of 4 cannot reach its with-replacement share (4*200/(4*200+1300) = 0.38),
    # but must be well above the plain share (200/1500 = 0.13).
    assert abs(plain - 200 / 1500) < 0.04
    assert weighted > plain + 0.1
    # A weight of 1 leaves the draw as it was (same random stream, same batches).
    cfg = TrainConfig(hard_negative_frac=1.0, batch_size=32)
    old = np.concatenate(_epoch_batches(fs, cfg, np.random.default_rng(0), scores.copy()))
    assert np.array_equal(old, share(1.0, 0)[1])
    # The stored scores are not changed by the weight (they stay the losses).
    s = scores.copy()
    _epoch_batches(fs, TrainConfig(hard_negative_frac=1.0, metal_negative_weight=4.0), np.random.default_rng(0), s)
    assert np.array_equal(s, scores)


def test_metal_weight_applies_to_negatives_not_drawn_yet():
    """With --hard-negative-init mean an unseen negative weighs the scored negatives' mean, times its weight."""
    from CACTrainerLib.training import TrainConfig, _epoch_batches

    fs = _fake_set(400, slice(300, 340))
    neg_metal = (fs.patch_labels == 0) & fs.metal.reshape(-1)
    scores = np.full(fs.n_patches, 0.2, np.float32)
    scores[neg_metal] = np.nan  # the metal negatives were never drawn

    def share(weight):
        out = []
        for seed in range(5):
            cfg = TrainConfig(hard_negative_frac=1.0, metal_negative_weight=weight, hard_negative_init="mean")
            ids = np.concatenate(_epoch_batches(fs, cfg, np.random.default_rng(seed), scores.copy()))
            out.append(neg_metal[ids[fs.patch_labels[ids] == 0]].mean())
        return np.mean(out)

    assert share(4.0) > share(1.0) + 0.1


@pytest.mark.parametrize("kw", [{"metal_negative_weight": 0.0}, {"metal_negative_weight": float("nan")},
                                {"metal_negative_weight": 2.0, "hard_negative_frac": 0.0}])
def test_bad_metal_weight_is_refused(kw):
    from CACTrainerLib.training import TrainConfig, train

    with pytest.raises(CacError, match="metal_negative_weight"):
        train(None, None, TrainConfig(**kw), "unused")


def test_cli_refuses_a_bad_metal_weight_before_making_data(tmp_path, capsys):
    from cac.cli import main

    out = tmp_path / "m.safetensors"
    code = main(["train", "--phantom-pool", "4", "--metal-negative-weight", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--metal-negative-weight" in err and "positive" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--phantom-pool", "4", "--recipe", "paper", "--metal-negative-weight", "3",
                 "--out", str(out)])
    assert code == 2 and "hard_negative_frac > 0" in capsys.readouterr().err
    assert not out.exists() and not any(tmp_path.iterdir())


def test_cli_aux_weight_sets_the_dense_loss_and_refuses_a_bad_one(tmp_path, capsys):
    """--aux-weight overrides the recipe's dense ROI_GT weight (an ablation without it); a negative one is refused."""
    from cac import cli, cli_train

    parser = cli.build_parser()
    assert cli_train._config(parser.parse_args(["train", "--phantom-pool", "4"])).aux_weight == 1.0
    cfg = cli_train._config(parser.parse_args(["train", "--phantom-pool", "4", "--aux-weight", "0"]))
    assert (cfg.recipe, cfg.aux_weight, cfg.hard_negative_frac) == ("default", 0.0, 0.5)
    out = tmp_path / "m.safetensors"
    code = cli.main(["train", "--phantom-pool", "4", "--aux-weight", "nan", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--aux-weight" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not any(tmp_path.iterdir())
