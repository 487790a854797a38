"""ROI refinement: island removal (against skimage's label areas), smoothing, threshold."""

import re

import numpy as np
import pytest
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.refinement import refine, remove_small_islands
from skimage.measure import label, regionprops


def blobs(rng, n=25, shape=(512, 512)):
    img = np.zeros(shape, bool)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        a, b = rng.uniform(4, 35, size=2)
        img |= ((rr - r) / a) ** 2 + ((cc - c) / b) ** 2 <= 1
    return img


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_islands_below_min_size_removed_against_label_areas(seed):
    img = blobs(np.random.default_rng(seed))
    out = remove_small_islands(img, 1000)
    lab = label(img, connectivity=1)
    expected = np.zeros_like(img)
    for region in regionprops(lab):
        if region.area >= 1000:
            expected[lab == region.label] = True
    np.testing.assert_array_equal(out, expected)
    assert out.any() and (img & ~out).any()  # the case is not trivial


def test_exact_boundary_1000_kept_999_removed():
    img = np.zeros((200, 200), bool)
    img[10:30, 10:60] = True  # 1000 px
    img[100:127, 100:137] = True  # 27 x 37 = 999 px
    assert img[100:127, 100:137].sum() == 999
    out = remove_small_islands(img, 1000)
    assert out[10:30, 10:60].all() and not out[100:127, 100:137].any()


def test_refine_order_and_threshold_keep_area_round_outline():
    prob = np.zeros((512, 512), np.float32)
    prob[100:200, 100:200] = 0.9  # large square: kept, corners rounded
    prob[300:320, 300:320] = 0.95  # 400 px: removed as an island
    prob[400:450, 400:450] = 0.3  # below the probability threshold
    out = refine(prob)
    assert out.dtype == bool
    assert not out[300:320, 300:320].any() and not out[400:450, 400:450].any()
    area = out.sum()
    assert 0.97 * 10000 < area <= 10000  # area nearly kept
    assert not out[100, 100] and out[150, 150]  # corner rounded off
    np.testing.assert_array_equal(refine(prob > 0.5, sigma=0), remove_small_islands(prob > 0.5, 1000))
    # a notch narrower than sigma is filled by the smoothing
    notch = np.zeros((256, 256), bool)
    notch[50:150, 50:150] = True
    notch[50:100, 99:101] = False
    assert refine(notch, sigma=3)[60:90, 99:101].all()


def test_refine_anisotropic_and_errors():
    prob = np.zeros((128, 128), np.float32)
    prob[30:90, 30:90] = 1
    iso = refine(prob, min_island_px=0, sigma=4)
    aniso_same = refine(prob, min_island_px=0, sigma=4, spacing_mm=(0.3, 0.3))
    np.testing.assert_array_equal(iso, aniso_same)
    assert refine(np.zeros((64, 64)), sigma=3).sum() == 0
    with pytest.raises(CacError):
        refine(prob, threshold=1.5)
    with pytest.raises(ValueError):
        refine(np.zeros((2, 8, 8)))


@pytest.mark.parametrize("seed", range(6))
def test_refine_equals_full_frame_gaussian(seed):
    """refine smooths only around the ROI; the result must equal smoothing the whole frame."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = np.zeros((160, 200), bool)
    for _ in range(3):  # blobs, some touching the frame border
        r, c = rng.integers(0, 160), rng.integers(0, 200)
        mask[max(0, r - 25) : r + 25, max(0, c - 20) : c + 30] = True
    spacing = (0.3, 0.3 * rng.uniform(1.0, 1.5))
    for sp in (None, spacing):
        sig = (3.0, 3.0) if sp is None else (3.0 * min(sp) / sp[0], 3.0 * min(sp) / sp[1])
        expected = ndimage.gaussian_filter(mask.astype(np.float32), sig, mode="nearest", truncate=4.0) >= 0.3
        got = refine(mask, min_island_px=0, sigma=3.0, threshold=0.3, spacing_mm=sp)
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("kw,phrase", [
    ({"sigma": 1e9}, "sigma=1000000000.0 (--sigma)"),  # once a MemoryError after the network had run
    ({"sigma": float("inf")}, "sigma=inf (--sigma)"),
    ({"sigma": -1.0}, "sigma=-1.0 (--sigma)"),
    ({"sigma": float("nan")}, "sigma=nan (--sigma)"),
    ({"min_island_px": float("inf")}, "min_island_px=inf (--min-island)"),
    ({"min_island_px": 10**8}, "min_island_px=100000000 (--min-island)"),
    ({"min_island_px": -1}, "min_island_px=-1 (--min-island)"),
    ({"threshold": 0.0}, "threshold=0.0 (--threshold)"),
    ({"threshold": 1.0}, "threshold=1.0 (--threshold)"),
    ({"threshold": float("nan")}, "threshold=nan (--threshold)"),
    ({"sigma": None}, "sigma=None (--sigma)"),  # not a number
])
def test_check_settings_refuses_out_of_range_with_the_option_name(kw, phrase):
    from CACIdentifierLib.refinement import DEFAULTS, check_settings

    with pytest.raises(CacError, match=re.escape(phrase)) as info:
        check_settings(**{**DEFAULTS, **kw})
    assert "\n" not in str(info.value)
    with pytest.raises(CacError, match=re.escape(phrase)):
        refine(np.zeros((8, 8), bool), **{**DEFAULTS, **kw})


def test_check_settings_names_every_bad_setting_and_accepts_the_bounds():
    from CACIdentifierLib.refinement import MIN_ISLAND_MAX_PX, SIGMA_MAX_PX, check_settings

    with pytest.raises(CacError, match=r"settings sigma=200.0 \(--sigma\).*; threshold=2 \(--threshold\)"):
        check_settings(sigma=200.0, min_island_px=0, threshold=2)
    check_settings(sigma=0, min_island_px=0, threshold=1e-6)
    check_settings(sigma=SIGMA_MAX_PX, min_island_px=MIN_ISLAND_MAX_PX, threshold=1 - 1e-6)
    # The largest sigma runs on a full 512-px frame (no memory blow-up), and blurs a calcium-sized ROI away.
    mask = np.zeros((512, 512), bool)
    mask[200:260, 200:260] = True
    assert not refine(mask, min_island_px=0, sigma=SIGMA_MAX_PX).any()
