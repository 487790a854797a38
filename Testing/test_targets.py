"""ROI_GT dilation and per-patch labels (CACTrainerLib.targets)."""

import numpy as np
import pytest
from CACIdentifierLib.errors import CacError
from CACTrainerLib import targets
from scipy import ndimage
from skimage import morphology


def test_single_pixel_grows_to_disk_of_radius_20():
    mask = np.zeros((101, 101), bool)
    mask[50, 50] = True
    roi = targets.roi_gt(mask)  # 4 iterations of 5 px (paper Table 1)
    # Every pixel of the ROI lies within 20 px of the seed; the one-shot digital disk of
    # radius 20 is the independent reference: the iterated dilation equals it up to a
    # few discretisation pixels on the rim.
    dist = ndimage.distance_transform_edt(~mask)
    assert dist[roi].max() <= 20.0 + 1e-9
    ref = morphology.disk(20).astype(bool)
    assert roi.sum() <= ref.sum() and (ref.sum() - roi.sum()) / ref.sum() < 0.05
    assert roi[dist <= 18.5].all()  # the disk of radius 18.5 is entirely inside
    # symmetric (a disk, not a square or a diamond)
    assert np.array_equal(roi, roi.T) and np.array_equal(roi, roi[::-1])
    area_ratio = roi.sum() / (np.pi * 20 ** 2)
    assert 0.93 < area_ratio < 1.0


def test_iterations_and_step_are_parameters():
    mask = np.zeros((81, 81), bool)
    mask[40, 40] = True
    dist = ndimage.distance_transform_edt(~mask)
    for iterations, step in [(1, 5), (3, 5), (2, 7), (6, 5)]:
        roi = targets.roi_gt(mask, iterations=iterations, step_px=step)
        radius = iterations * step
        assert dist[roi].max() <= radius + 1e-9
        assert roi[dist <= radius - 1.5].all()
        ref = morphology.disk(radius)
        assert (ref.sum() - roi.sum()) / ref.sum() < 0.07
    assert np.array_equal(targets.roi_gt(mask, iterations=0), mask)
    with pytest.raises(CacError):
        targets.roi_gt(mask, iterations=-1)
    with pytest.raises(CacError):
        targets.roi_gt(mask, step_px=0)


def test_one_step_is_skimage_disk_dilation():
    rng = np.random.default_rng(0)
    mask = rng.random((120, 140)) > 0.995
    roi = targets.roi_gt(mask, iterations=1, step_px=5)
    ref = morphology.dilation(mask, morphology.disk(5)).astype(bool)
    assert np.array_equal(roi, ref)


def test_bounding_box_shortcut_equals_full_frame_dilation():
    rng = np.random.default_rng(1)
    mask = np.zeros((200, 220), bool)
    mask[3:6, 150:158] = True  # near the border: the crop is clipped to the frame
    mask[120:123, 40:44] = True
    roi = targets.roi_gt(mask, iterations=4, step_px=5)
    ref = mask.copy()
    for _ in range(4):
        ref = ndimage.binary_dilation(ref, structure=morphology.disk(5).astype(bool))
    assert np.array_equal(roi, ref)
    assert rng is not None


def test_anisotropic_spacing_gives_ellipse_of_equal_physical_radius():
    mask = np.zeros((101, 101), bool)
    mask[50, 50] = True
    # rows twice as coarse as columns
    roi = targets.roi_gt(mask, iterations=4, step_px=6, spacing_mm=(0.4, 0.2))
    rows = np.nonzero(roi.any(axis=1))[0]
    cols = np.nonzero(roi.any(axis=0))[0]
    assert rows.max() - 50 == 12  # 4 x 3 px along rows (0.4 mm pixels): 4.8 mm
    assert cols.max() - 50 == 24  # 4 x 6 px along columns (0.2 mm pixels): 4.8 mm
    fp = targets.dilation_footprint(6, (0.4, 0.2))
    assert fp.shape == (7, 13)
    assert np.array_equal(targets.dilation_footprint(5, (0.3, 0.3)), morphology.disk(5).astype(bool))


def test_stack_is_dilated_frame_by_frame_and_empty_stays_empty():
    stack = np.zeros((3, 64, 64), bool)
    stack[1, 32, 32] = True
    roi = targets.roi_gt(stack)
    assert not roi[0].any() and not roi[2].any()
    assert roi[1].sum() > 1000


def test_patch_labels_rule():
    mask = np.zeros((512, 512), bool)
    origins = [(0, 0), (0, 256), (256, 0), (256, 256), (128, 128)]
    assert targets.patch_labels(mask, origins).tolist() == [0, 0, 0, 0, 0]
    # deposit well inside the top-left corner patch only
    mask[40:46, 40:46] = True
    assert targets.patch_labels(mask, origins).tolist() == [1, 0, 0, 0, 0]
    # deposit straddling the vertical border x=256 in the top row (rows 40-46), 2 columns inside
    # patch 0 and 8 in patch 1: with the half-deposit rule only patch 1 is positive
    m2 = np.zeros_like(mask)
    m2[40:46, 254:264] = True
    assert targets.patch_labels(m2, origins).tolist() == [0, 1, 0, 0, 0]
    assert targets.patch_labels(m2, origins, min_deposit_fraction=0).tolist() == [1, 1, 0, 0, 0]
    # a deposit at the frame centre is in all four corner patches partly and fully in the centre patch
    m3 = np.zeros_like(mask)
    m3[250:262, 250:262] = True
    assert targets.patch_labels(m3, origins).tolist() == [0, 0, 0, 0, 1]


def test_patch_targets_cut_full_frame_roi():
    from CACIdentifierLib import patches
    mask = np.zeros((512, 512), bool)
    mask[250:254, 300:304] = True
    labels, roi = targets.patch_targets(mask)
    assert labels.shape == (5,) and roi.shape == (5, 256, 256) and roi.dtype == bool
    full = targets.roi_gt(mask)
    for k, (r, c) in enumerate(patches.patch_origins(512, 512)):
        assert np.array_equal(roi[k], full[r:r + 256, c:c + 256])
        assert labels[k] == float(mask[r:r + 256, c:c + 256].sum() >= 8)
