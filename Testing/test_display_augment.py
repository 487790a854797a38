"""XA display processing as a training augmentation (``--display-augment``): harmonization and edge enhancement."""

from dataclasses import replace

import numpy as np
import pytest
from CACTrainerLib import dataset as D
from scipy import ndimage


def _blob_frame(rng, n=512):
    """A smooth background with a small dark disc (a deposit) at (300, 200)."""
    x = ndimage.gaussian_filter(rng.random((n, n)), 40)
    x = 0.3 + 0.4 * (x - x.min()) / np.ptp(x)
    rr, cc = np.mgrid[:n, :n]
    x[(rr - 300) ** 2 + (cc - 200) ** 2 <= 16] -= 0.05
    return x.astype(np.float32)


def test_processing_keeps_the_range_deepens_small_dark_details_and_flattens_the_background():
    x = _blob_frame(np.random.default_rng(0))
    y = D.display_processing(x, (32.0, 2.0, 1.5, 1.0))
    assert y.dtype == np.float32 and y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    # The 1st-99th percentile range lands where the input's was (the pipeline normalises frames so).
    np.testing.assert_allclose(np.percentile(y, [1, 99]), np.percentile(x, [1, 99]), atol=0.02)

    def contrast(img):  # the deposit against a ring around it
        rr, cc = np.mgrid[:512, :512]
        d2 = (rr - 300) ** 2 + (cc - 200) ** 2
        return img[(d2 >= 64) & (d2 <= 144)].mean() - img[d2 <= 4].mean()

    assert contrast(y) > 1.5 * contrast(x) > 0
    # Harmonization: against the slow background (heart, lung), the texture stands out more -- the flat look.
    def texture_to_background(img):
        low = ndimage.gaussian_filter(img, 64)
        return (img - low).std() / low.std()

    assert texture_to_background(y) > 1.5 * texture_to_background(x)


def test_the_background_goes_through_the_same_filter_and_map_so_the_residual_is_processed_too():
    rng = np.random.default_rng(1)
    bg = _blob_frame(rng, 256)
    frame = bg.copy()
    frame[100:104, 100:104] -= 0.04  # what moves: the residual
    params = (20.0, 1.0, 1.0, 1.0)
    y, ybg = D.display_processing(frame, params, bg)
    same, same_bg = D.display_processing(bg, params, bg)
    np.testing.assert_allclose(same, same_bg, atol=1e-6)  # nothing moves: no residual, processed or not
    residual = y - ybg
    assert np.abs(residual[:45]).max() < 1e-6  # beyond the large kernel's reach (2 x 24 px), none
    assert residual[100:104, 100:104].mean() < -0.04  # the change deepened, as the frame's details are


def test_make_batch_processes_a_share_of_pairs_and_draws_nothing_when_off():
    rng = np.random.default_rng(2)
    n = 2
    nc = np.stack([_blob_frame(rng) for _ in range(n)]).astype(np.float16)
    z = np.zeros((n, 512, 512), bool)
    fs = D.FrameSet(nc, nc.copy(), z, z, np.zeros((n, 5), np.float32), np.full((n, 2), 0.3), np.arange(n),
                    np.arange(n) + 5, np.zeros((n, 5), bool), None, ["a", "a"], ["p", "p"])
    ids = [5, 6, 7, 8, 9] * 8
    plain = D.Augment(flips=False, shift_px=0, gain=0, offset=0, gamma=0, noise=0)
    # display 0 draws nothing from the generator: the batches are those of before the option.
    a = D.make_batch(fs, ids, np.random.default_rng(7), D.Augment())
    b = D.make_batch(fs, ids, np.random.default_rng(7), D.Augment(display=0.0))
    np.testing.assert_array_equal(a["nc"], b["nc"])
    ref = D.make_batch(fs, ids)
    out = D.make_batch(fs, ids, np.random.default_rng(7), replace(plain, display=0.5))
    changed = np.abs(out["nc"] - ref["nc"]).reshape(len(ids), -1).max(axis=1) > 1e-3
    assert 0.2 < changed.mean() < 0.8  # about half of the pairs
    # Both frames of a pair are processed or neither (one system, one run).
    changed_c = np.abs(out["c"] - ref["c"]).reshape(len(ids), -1).max(axis=1) > 1e-3
    np.testing.assert_array_equal(changed, changed_c)
    np.testing.assert_array_equal(out["label"], ref["label"])
    np.testing.assert_array_equal(out["roi"], ref["roi"])


def test_the_option_is_checked_before_any_work(tmp_path, capsys):
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib import training as T
    from CACTrainerLib.recipes import recipe_config

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(CacError, match="display_augment"):
            T.check_config(recipe_config("default", display_augment=bad))
    # The batches of an epoch carry it; with --no-augment there is no augmentation at all, display included.
    assert T.BatchSource(None, [], recipe_config("default", display_augment=0.5), 1, 0).augment.display == 0.5
    off = recipe_config("default", display_augment=0.5, augment=False)
    T.check_config(off)
    assert T.BatchSource(None, [], off, 1, 0).augment is None
    assert recipe_config("default", display_augment=0.5).display_augment == 0.5
    from cac.cli import main

    assert main(["train", "--phantom-pool", "4", "--display-augment", "2", "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "display_augment (--display-augment) is a probability in [0, 1], got 2.0" in err and "Traceback" not in err
