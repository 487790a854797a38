"""Patches: layout, extraction, stitching round trip, normalisation, resampling to 512."""


import numpy as np
import pytest
from CACIdentifierLib.patches import (
    PATCH_SIZE,
    extract_patches,
    normalize_frame,
    patch_origins,
    prepare_frame,
    restore_mask,
    stitch,
)
from conftest import GE, needs_data, require


def test_origins_are_the_papers_and_cover_the_frame():
    assert patch_origins(512, 512) == [(0, 0), (0, 256), (256, 0), (256, 256), (128, 128)]
    covered = np.zeros((512, 512), int)
    for r, c in patch_origins(512, 512):
        covered[r : r + PATCH_SIZE, c : c + PATCH_SIZE] += 1
    assert covered.min() == 1
    assert (covered == 2).sum() == 256 * 256  # the centre patch overlaps exactly one patch area
    with pytest.raises(ValueError):
        patch_origins(200, 512)


def test_extract_matches_slicing_and_stacks():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4096, size=(3, 512, 512), dtype=np.uint16)
    p = extract_patches(frames)
    assert p.shape == (3, 5, 256, 256) and p.dtype == np.uint16
    np.testing.assert_array_equal(p[1, 4], frames[1, 128:384, 128:384])
    np.testing.assert_array_equal(p[2, 1], frames[2, 0:256, 256:512])
    np.testing.assert_array_equal(extract_patches(frames[0]), p[0])


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_stitch_round_trip(mode):
    rng = np.random.default_rng(1)
    frame = rng.random((512, 512)).astype(np.float32)
    back = stitch(extract_patches(frame), 512, 512, mode=mode)
    np.testing.assert_allclose(back, frame, rtol=0, atol=1e-7)


def test_stitch_max_keeps_detection_of_one_patch_and_mean_averages():
    maps = np.zeros((5, 256, 256), np.float32)
    maps[4, 100:110, 100:110] = 0.8  # only the centre patch sees it; frame rows 228..238
    assert stitch(maps, mode="max")[228:238, 228:238].min() == pytest.approx(0.8)
    assert stitch(maps, mode="mean")[228:238, 228:238].max() == pytest.approx(0.4)
    bool_maps = maps > 0.5
    out = stitch(bool_maps)
    assert out.dtype == bool and out.sum() == 100
    with pytest.raises(ValueError):
        stitch(maps, mode="median")
    with pytest.raises(ValueError):
        stitch(maps[:4])


def test_normalize_frame_is_bit_depth_and_exposure_invariant():
    rng = np.random.default_rng(2)
    base = rng.random((512, 512))
    f8 = np.round(base * 255).astype(np.uint8)
    f12 = (f8.astype(np.uint16) * 16 + 100).astype(np.uint16)  # 12-bit, other window
    n8, n12 = normalize_frame(f8), normalize_frame(f12)
    assert n8.dtype == np.float32 and n8.min() == 0.0 and n8.max() == 1.0
    np.testing.assert_allclose(n8, n12, atol=1e-6)
    lo, hi = np.percentile(f8.astype(np.float32), [1, 99])
    assert np.mean(n8 == 0.0) == pytest.approx(np.mean(f8 <= lo), abs=1e-9)
    assert normalize_frame(np.full((64, 64), 7, np.uint16)).max() == 0.0  # blank frame
    assert normalize_frame(np.stack([f8, f12])).shape == (2, 512, 512)


def test_normalize_frame_of_integer_frames_equals_numpy_percentiles_to_the_bit():
    # Integer frames take a histogram path; it must give np.percentile's values exactly.
    rng = np.random.default_rng(5)
    for trial in range(200):
        dtype = (np.uint8, np.uint16)[trial % 2]
        top = 256 if dtype == np.uint8 else int(rng.integers(2, 65536))
        shape = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        frame = rng.integers(0, top, size=shape).astype(dtype)
        if trial % 7 == 0:
            frame[: shape[0] // 2] = frame.flat[0]  # many ties
        lo, hi = np.percentile(frame.astype(np.float32), [1, 99])
        expected = np.zeros(shape, np.float32) if hi <= lo else np.clip(
            (frame.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)
        np.testing.assert_array_equal(normalize_frame(frame), expected)


def test_prepare_frame_resamples_and_scales_spacing():
    frame = np.zeros((1024, 1024), np.uint16)
    frame[400:600, 300:500] = 1000
    f512, sp, scale = prepare_frame(frame, (0.2, 0.2))
    assert f512.shape == (512, 512) and scale == (2.0, 2.0)
    assert sp == pytest.approx((0.4, 0.4))
    # the bright square keeps its physical area: 200x200 px at 0.2 mm = 100x100 px at 0.4 mm
    assert np.sum(f512 > 500) == pytest.approx(100 * 100, rel=0.03)
    mask = f512 > 500
    back = restore_mask(mask, 1024, 1024)
    assert back.shape == (1024, 1024)
    assert np.sum(back & (frame > 0)) / np.sum(frame > 0) > 0.97
    same, sp2, sc2 = prepare_frame(np.ones((512, 512), np.uint8), None)
    assert same.dtype == np.uint8 and sp2 is None and sc2 == (1.0, 1.0)
    f2, sp3, _ = prepare_frame(np.ones((768, 1024), np.float32), (0.3, 0.3))
    assert f2.shape == (512, 512) and sp3 == pytest.approx((0.45, 0.6))


@needs_data
def test_real_cine_frames():
    from CACIdentifierLib.cine_io import load_cine

    cine = load_cine(require(GE))
    frame = cine.frames[5]
    f512, sp, scale = prepare_frame(frame, cine.spacing_mm)
    assert f512 is frame and sp == cine.spacing_mm and scale == (1.0, 1.0)
    norm = normalize_frame(f512)
    lo, hi = np.percentile(frame.astype(np.float64), [1, 99])
    inside = (frame > lo) & (frame < hi)
    np.testing.assert_allclose(norm[inside], (frame[inside] - lo) / (hi - lo), atol=1e-5)
    assert norm.min() == 0.0 and norm.max() == 1.0
    # the same frame at 12 bits and twice the size: same normalised patches after prepare_frame
    big = np.kron(frame.astype(np.uint16) * 16, np.ones((2, 2), np.uint16))
    b512, bsp, _ = prepare_frame(big, (cine.spacing_mm[0] / 2, cine.spacing_mm[1] / 2))
    assert bsp == pytest.approx(cine.spacing_mm)
    diff = np.abs(normalize_frame(b512) - norm)
    assert np.median(diff) < 0.02
    p = extract_patches(norm)
    np.testing.assert_array_equal(stitch(p), norm)
