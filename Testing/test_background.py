"""The residual channel (background.py): the cine's static background, in training and in identify.

The background is checked against numpy's own median of the frames as identify prepares them,
a frame model widened with zero residual weights must give exactly its old probabilities, and
with non-zero residual weights identify must feed the network what the documentation says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from CACIdentifierLib.background import RESIDUAL_GAIN, cine_background, temporal_background, with_residual
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.network import ResUNet18


def test_background_keeps_what_stays_and_drops_what_moves():
    rng = np.random.default_rng(0)
    frames = np.full((9, 64, 64), 0.8, np.float32) + rng.normal(0, 0.01, (9, 64, 64)).astype(np.float32)
    frames[:, 10:12, :] = 0.3  # a static wire
    for k in range(9):
        frames[k, 40:44, 4 + 6 * k:8 + 6 * k] = 0.4  # a deposit moving across the frame
    bg = temporal_background(frames)
    assert abs(float(bg[10:12].mean()) - 0.3) < 0.01
    assert abs(float(bg[40:44].mean()) - 0.8) < 0.01
    res = with_residual(frames[:, None], np.broadcast_to(bg, frames.shape)[:, None].copy())
    assert res.shape == (9, 2, 64, 64)
    # In the residual the deposit stands out of the wire's rows by far; in the frame it does not.
    deposit = -res[4, 1, 40:44, 28:32].mean()
    wire = np.abs(res[4, 1, 10:12]).mean()
    assert deposit > 10 * wire and abs(deposit - RESIDUAL_GAIN * 0.4) < 0.05
    with pytest.raises(ValueError):
        temporal_background(frames[0])
    with pytest.raises(ValueError):
        with_residual(frames[:, None], frames[:, None, :32])
    with pytest.raises(CacError):
        cine_background(frames, [])


def test_cine_background_equals_the_median_of_the_prepared_frames():
    from CACIdentifierLib.patches import normalize_frame, prepare_frame

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4096, (6, 300, 260)).astype(np.uint16)  # not 512: resampled first
    ks = [0, 2, 3]
    expected = np.median([normalize_frame(prepare_frame(frames[k], (0.3, 0.3))[0]) for k in ks], axis=0)
    np.testing.assert_allclose(cine_background(frames, ks + [2], (0.3, 0.3)), expected, atol=1e-6)


def test_architecture_and_model_card_know_the_residual_inputs():
    from CACIdentifierLib.modelio import default_metadata, validate_metadata

    with pytest.raises(ValueError, match="in_channels 2"):
        ResUNet18(inputs="frame+residual")
    with pytest.raises(ValueError, match="inputs must be"):
        ResUNet18(in_channels=2, inputs="residual")
    arch = ResUNet18(in_channels=2, inputs="frame+residual", width=8, decoder_channels=[8] * 5).arch_dict()
    assert arch["inputs"] == "frame+residual"
    meta = dict(default_metadata(), architecture=arch)
    assert validate_metadata(meta, "m")["architecture"]["inputs"] == "frame+residual"
    for bad in (dict(arch, in_channels=1), dict(arch, inputs="motion")):
        with pytest.raises(CacError, match="architecture.inputs"):
            validate_metadata(dict(meta, architecture=bad), "m")


def test_make_batch_residual_channel():
    from CACIdentifierLib.patches import extract_patches
    from CACTrainerLib import dataset as D

    rng = np.random.default_rng(2)
    n = 2
    nc = rng.random((n, 512, 512)).astype(np.float16)
    bg = rng.random((n, 512, 512)).astype(np.float16)
    z = np.zeros((n, 512, 512), bool)
    fs = D.FrameSet(nc, nc.copy(), z, z, np.zeros((n, 5), np.float32), np.full((n, 2), 0.3), np.arange(n),
                    np.arange(n) + 5, np.zeros((n, 5), bool), bg, ["a", "a"], ["p", "p"])
    ids = list(range(5, 10))
    plain = D.make_batch(fs, ids)
    b = D.make_batch(fs, ids, inputs="frame+residual")
    assert b["nc"].shape == (5, 2, 256, 256) and b["c"].shape == (5, 2, 256, 256)
    np.testing.assert_array_equal(b["nc"][:, 0], plain["nc"][:, 0])
    x = extract_patches(nc[1].astype(np.float32))
    np.testing.assert_allclose(b["nc"][:, 1], RESIDUAL_GAIN * (x - extract_patches(bg[1].astype(np.float32))), atol=1e-6)
    # Augmented: the background goes through the frame's flips, gain, offset and gamma (not its noise), so a
    # frame equal to its background keeps a residual of noise only.
    same = D.FrameSet(nc, nc.copy(), z, z, np.zeros((n, 5), np.float32), np.full((n, 2), 0.3), np.arange(n),
                      np.arange(n) + 5, np.zeros((n, 5), bool), nc.copy(), ["a", "a"], ["p", "p"])
    aug = D.make_batch(same, ids * 4, np.random.default_rng(3), D.Augment(noise=0.0), inputs="frame+residual")
    assert np.abs(aug["nc"][:, 1]).max() < 1e-5 and np.abs(aug["c"][:, 1]).max() < 1e-5
    noisy = D.make_batch(same, ids * 4, np.random.default_rng(3), D.Augment(), inputs="frame+residual")
    assert 0 < np.abs(noisy["nc"][:, 1]).std() < RESIDUAL_GAIN * 0.03


def test_frame_only_training_sets_skip_the_background():
    """background=False (what frame-only training builds): the same frames, no background, clear errors."""
    from CACTrainerLib import dataset as D
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    acq = generate_acquisition(PhantomParams(n_frames=40, rows=128, cols=128), seed=5, patient=0, calcium_free=False)
    kw = dict(acquisition="A", patient="P", frames_per_acquisition=3)
    full = D.frames_from_acquisition(acq, **kw)
    lean = D.frames_from_acquisition(acq, background=False, **kw)
    assert full.has_background and not lean.has_background
    assert lean.background.shape == (len(lean), 0, 0) and lean.background.nbytes == 0
    for k in D.FrameSet.array_fields()[:-1]:
        np.testing.assert_array_equal(getattr(lean, k), getattr(full, k), err_msg=k)
    # subset and concat keep "no background"; mixing the two kinds is refused by name
    both = D.FrameSet.concat([lean, lean.subset([0])])
    assert not both.has_background and len(both) == len(lean) + 1
    with pytest.raises(ValueError, match="background"):
        D.FrameSet.concat([lean, full])
    np.testing.assert_array_equal(D.make_batch(lean, [0, 7])["nc"], D.make_batch(full, [0, 7])["nc"])
    with pytest.raises(ValueError, match="background=True"):
        D.make_batch(lean, [0, 7], inputs="frame+residual")


@pytest.fixture(scope="module")
def cine():
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    return generate_acquisition(PhantomParams(n_frames=32), seed=7, patient=1, calcium_free=False).to_cine()


def _expected_inputs(p_nc, p_c, bg, inputs):
    """The heads' inputs as the documentation describes them, built by hand."""
    r_nc, r_c = RESIDUAL_GAIN * (p_nc - bg), RESIDUAL_GAIN * (p_c - bg)
    nc, c = [p_nc, r_nc], [p_c, r_c]
    if inputs == "frame+residual+vessels":  # the paired contrast patch's residual; zeros under the contrast head
        nc, c = nc + [r_c], c + [np.zeros_like(p_c)]
    return (torch.from_numpy(np.stack(x, 1).astype(np.float32)) for x in (nc, c))


@pytest.mark.parametrize("narrow,wide", [({"in_channels": 1, "inputs": "frame"}, {"in_channels": 2, "inputs": "frame+residual"}),
                                         ({"in_channels": 2, "inputs": "frame+residual"},
                                          {"in_channels": 3, "inputs": "frame+residual+vessels"})])
def test_identify_feeds_the_new_channel_a_widened_model_starts_from(cine, tmp_path, narrow, wide):
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import default_metadata, load_model, save_model
    from CACIdentifierLib.patches import extract_patches, normalize_frame, prepare_frame
    from CACTrainerLib.training import _load_initial_weights

    torch.manual_seed(0)
    arch = {"width": 8, "decoder_channels": [8] * 5}
    small = ResUNet18(**arch, **narrow).eval()
    path = tmp_path / "narrow.safetensors"
    save_model(path, small, dict(default_metadata(), architecture=small.arch_dict()), dtype=torch.float32)
    model = ResUNet18(**arch, **wide)
    _load_initial_weights(model, path)
    model.eval()
    meta = {"architecture": model.arch_dict()}
    a = identify(cine, load_model(path)[0], {}, use_autocast=False, workers=1)
    b = identify(cine, model, meta, sync=a.sync, use_autocast=False, workers=1)
    # Zero weights on the new channel: the widened model computes what the narrower model did.
    np.testing.assert_allclose(a.patch_probabilities, b.patch_probabilities, atol=1e-5)
    # Give the new channel weight, and identify must feed what the docs say (background.py): the residual is
    # the gain times the frame minus the median of the analysed non-contrast frames, prepared as the patches
    # are; the vessel channel is the paired contrast patch's residual.  Two workers: the contrast head is
    # computed once per contrast frame and shared.
    new = wide["in_channels"] - 1
    with torch.no_grad():
        for head in (model.head_nc, model.head_c):
            head.conv1.weight[:, new] = torch.randn_like(head.conv1.weight[:, new])
    c = identify(cine, model, meta, sync=a.sync, use_autocast=False, workers=2)
    assert np.abs(c.patch_probabilities - a.patch_probabilities).max() > 1e-3

    def prepared(k):
        return normalize_frame(prepare_frame(cine.frames[k], cine.spacing_mm)[0])

    bg = extract_patches(np.median([prepared(k) for k in a.frames], axis=0))
    for i in range(len(a.frames)):
        nc, cc = _expected_inputs(*(extract_patches(prepared(k)) for k in (a.frames[i], a.contrast_frames[i])), bg,
                                  wide["inputs"])
        with torch.inference_mode():
            expected = torch.sigmoid(model.classify(nc, cc)).numpy()
        np.testing.assert_allclose(c.patch_probabilities[i], expected, atol=1e-4)


def test_residual_contrast_benchmark_runs(tmp_path):
    import json

    from benchmark_scripts import load

    out = tmp_path / "rc.json"
    assert load("residual_contrast").main(["--test", "3", "--patch-auc", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] > 0 and set(result["median_ratio"]) == {"frame", "median", "p75", "p90", "max"}
    assert set(result["dark_blob_patch_auc"]) == {"frame", "median", "registered median"}
    assert all(0.0 <= v <= 1.0 for v in result["dark_blob_patch_auc"].values())  # both classes in 3 patients


def test_background_cost_benchmark_runs(capsys):
    from benchmark_scripts import load

    assert load("bench_background").main(["--patients", "1"]) == 0
    out = capsys.readouterr().out
    # the memory ratio is arithmetic on the dtypes (a 0.5 MiB float16 background over 1.5 MiB of the rest)
    assert "memory 1.33" in out and "ratio with/without" in out
