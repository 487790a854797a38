"""benchmarks/second_generator.py: the independent cine generator behind the cross-domain benchmark.

The generator (small cines, a few seconds): shapes, determinism, the calcium truth (empty
without calcium, on every frame with it, darker than its surroundings, moving with the given
heart rate), iodine darkening the vessels, the collimator and the metal distractor.  The
benchmark itself once, on two tiny cines with the shipped model (its full runs take minutes).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from benchmark_scripts import load
from scipy import ndimage

sg = load("second_generator")


@functools.cache
def cine(seed: int, calcium: bool, n_frames: int = 24, size: int = 256):
    frames, masks, info = sg.make_cine(seed, calcium=calcium, n_frames=n_frames, size=size)
    for arr in (frames, masks, info["vessel_mask"], info["field_mask"]):
        arr.flags.writeable = False  # shared between tests
    return frames, masks, info


def test_shapes_dtypes_and_info():
    frames, masks, info = cine(1, True)
    assert frames.shape == masks.shape == info["vessel_mask"].shape == (24, 256, 256)
    assert frames.dtype == np.uint8 and masks.dtype == bool
    assert info["field_mask"].shape == (256, 256) and info["field_mask"].dtype == bool
    # Spacing of 0.25-0.35 mm at 512 px; the field of view is kept, so twice that at 256 px.
    assert 0.5 <= info["spacing_mm"] <= 0.7
    assert info["frame_time_ms"] == pytest.approx(1000 / 15)
    assert 55 <= info["heart_rate_bpm"] <= 95
    assert round(0.35 * 24) <= info["onset"] <= round(0.5 * 24)
    assert len(info["phase"]) == len(info["fill"]) == 24
    # No iodine before the onset, some at the onset, full about four frames later.
    fill = np.asarray(info["fill"])
    assert np.all(fill[: info["onset"]] == 0) and fill[info["onset"]] > 0 and fill[-1] == 1
    assert 1 <= len(info["deposits"]) <= 3
    # The full-size frame and a given onset are honoured; the images use the 8-bit range.
    frames512, _, info512 = sg.make_cine(1, calcium=False, n_frames=5, size=512, fps=30.0, contrast_onset=2)
    assert frames512.shape == (5, 512, 512) and info512["onset"] == 2
    assert 0.25 <= info512["spacing_mm"] <= 0.35 and info512["frame_time_ms"] == pytest.approx(1000 / 30)
    assert frames512.min() < 30 and frames512.max() > 200
    with pytest.raises(ValueError):
        sg.make_cine(0, calcium=True, n_frames=3)


def test_deterministic_per_seed_and_different_between_seeds():
    a = sg.make_cine(5, calcium=True, n_frames=6, size=128)
    b = sg.make_cine(5, calcium=True, n_frames=6, size=128)
    c = sg.make_cine(6, calcium=True, n_frames=6, size=128)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2]["heart_rate_bpm"] == b[2]["heart_rate_bpm"]
    assert np.mean(a[0] != c[0]) > 0.5
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_calcium_truth_present_exactly_when_asked(seed):
    _, free_masks, free_info = cine(seed, False)
    _, masks, info = cine(seed, True)
    assert not free_masks.any() and free_info["deposits"] == []
    per_frame = masks.sum(axis=(1, 2))
    assert (per_frame > 0).all(), per_frame
    # Small deposits: 3-40 px at 512 px is a quarter of that at 256 (a squeezed one keeps a pixel).
    assert per_frame.max() <= 3 * 10 + 5
    assert all(1 <= d["area_px"] <= 10 for d in info["deposits"])


@pytest.mark.parametrize("seed", [0, 2, 7])
def test_deposits_are_darker_than_their_surroundings(seed):
    frames, masks, info = cine(seed, True)
    free, _, _ = cine(seed, False)
    diffs = []
    for t in range(info["onset"]):  # non-contrast frames only
        m = masks[t]
        ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m, iterations=1)
        f = frames[t].astype(float)
        diffs.append(f[ring].mean() - f[m].mean())
    assert np.mean(diffs) > 2.0, diffs
    # The same seed without calcium is the same cine without the deposits: they are the only
    # difference, and they darken the image where the mask is.
    delta = frames.astype(float) - free.astype(float)
    near = ndimage.binary_dilation(masks, structure=np.ones((1, 21, 21), bool))
    assert np.all(delta[~near] == 0)
    assert delta[masks].mean() < -2.0


@pytest.mark.parametrize("seed", [0, 3])
def test_contrast_darkens_the_vessels(seed):
    frames, _, info = cine(seed, False)
    phase = np.asarray(info["phase"])
    b = info["onset"] + 4  # fully filled
    # The non-contrast frame at the closest cardiac phase: the vessels are where they are in b.
    dist = np.abs((phase[: info["onset"]] - phase[b] + 0.5) % 1.0 - 0.5)
    a = int(np.argmin(dist))
    vessels = info["vessel_mask"][b] & info["field_mask"]
    assert vessels.sum() > 100
    fa, fb = frames[a].astype(float), frames[b].astype(float)
    assert fa[vessels].mean() - fb[vessels].mean() > 20
    away = ~ndimage.binary_dilation(info["vessel_mask"][b] | info["vessel_mask"][a], iterations=12)
    away &= info["field_mask"]
    assert abs(fa[away].mean() - fb[away].mean()) < 5
    # Iodine in the vessels at the same place is far darker than without: per pixel too.
    assert np.median(fa[vessels] - fb[vessels]) > 15


@pytest.mark.parametrize("seed", [0, 4, 8])
def test_deposits_move_with_the_heart_rate(seed):
    _, masks, info = cine(seed, True, n_frames=48)
    # Where the deposits are: the mean of their centroids, each deposit (its grains merged)
    # weighing the same; a centroid of all pixels would jump when one deposit gains a pixel.
    labels = [ndimage.label(ndimage.binary_dilation(m, iterations=2))[0] for m in masks]
    counts = np.array([lab.max() for lab in labels])
    frames = np.nonzero(counts == np.bincount(counts).argmax())[0]
    centroids = np.array([np.mean(ndimage.center_of_mass(masks[f], labels[f], range(1, counts[f] + 1)), axis=0)
                          for f in frames])
    # The cardiac part: the slow respiratory drift (given per frame) is not periodic with the beat.
    centroids -= np.asarray(info["respiratory_shift_px"])[frames]
    assert len(frames) >= 40
    a, b = np.triu_indices(len(frames), k=1)
    i, j = frames[a], frames[b]
    moved = np.hypot(*(centroids[b] - centroids[a]).T)

    def same_phase(rate_bpm):
        """Mean displacement between frames a whole number of beats apart (within 5 % of a beat)."""
        beats = (j - i) * info["frame_time_ms"] * rate_bpm / 60_000.0
        off = np.abs(beats - np.round(beats))
        return float(moved[(off < 0.05) & (np.round(beats) >= 1)].mean())

    rate = info["heart_rate_bpm"]
    assert moved.mean() > 1.5, moved.mean()  # the deposits do move
    # They come back to the same place after every beat of the given rate, not of another one.
    assert same_phase(rate) < 0.4 * moved.mean(), (same_phase(rate), moved.mean())
    assert same_phase(rate) < 0.5 * min(same_phase(0.8 * rate), same_phase(1.25 * rate))


def test_collimator_border_is_dark():
    found = 0
    for seed in range(12):
        frames, _, info = sg.make_cine(seed, calcium=False, n_frames=4, size=128)
        if not info["collimated_sides"]:
            assert info["field_mask"].all()
            continue
        found += 1
        field = info["field_mask"]
        # Away from the penumbra: the blades' inner part against the field's.
        blade = ~ndimage.binary_dilation(field, iterations=3)
        inner = ndimage.binary_erosion(field, iterations=3)
        assert frames[:, blade].mean() < frames[:, inner].mean() - 60
        assert 0.6 < field.mean() < 1.0
    assert found >= 3


def test_metal_distractor_is_dense_and_not_calcium():
    found = 0
    for seed in range(10):
        frames, masks, info = sg.make_cine(seed, calcium=True, n_frames=4, size=256, contrast_onset=3)
        d = info["distractor"]
        if d is None:
            continue
        found += 1
        # The metal is the darkest thing near its place (a clip on the heart moves with it).
        r, c = (int(round(v)) for v in d["centre"])
        r0, c0 = max(r - 20, 0), max(c - 20, 0)
        window = frames[0, r0: r + 20, c0: c + 20]
        at = np.unravel_index(np.argmin(window), window.shape)
        at = (at[0] + r0, at[1] + c0)
        assert frames[0][at] < frames[0][masks[0]].min(), seed  # denser than any deposit
        assert not masks[0, at[0] - 4: at[0] + 5, at[1] - 4: at[1] + 5].any()  # and never in the truth
    assert 2 <= found <= 8


def test_the_benchmark_runs_with_edge_enhancement_and_reports_the_frame_auc(tmp_path):
    """The whole benchmark on two tiny cines with the shipped model: the processing is recorded and the
    threshold-free frame AUC is the Mann-Whitney AUC of the per-frame probabilities it reports."""
    import json
    from pathlib import Path

    from CACIdentifierLib.metrics import roc_auc

    model = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "cac_default.safetensors"
    out = tmp_path / "sg.json"
    assert sg.main([str(model), "--cines", "1", "--free", "1", "--frames", "40", "--size", "256",
                    "--edge-enhance", "4,1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["generator"]["edge_enhance"] == [4.0, 1.0]
    (row,) = res["models"].values()
    cines = row["cines"]
    truth = [t for c in cines for t in c["truth_any"]]
    p = [v for c in cines for v in c["p_frames"]]
    assert len(p) == len(truth) and any(truth) and not all(truth)
    assert row["summary"]["frame_auc"] == roc_auc(truth, p)
    with pytest.raises(SystemExit):
        sg.main([str(model), "--edge-enhance", "4", "--out", str(out)])  # SIGMA,GAIN: refused by argparse
