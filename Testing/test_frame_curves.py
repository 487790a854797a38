"""benchmarks/frame_curves.py: a card's frame sensitivity/specificity curve over the classifier threshold."""

import numpy as np
import pytest
from benchmark_scripts import load


def test_frame_curve_is_the_brute_force_count_at_every_threshold_and_stops_at_the_ceiling():
    fc = load("frame_curves")
    rng = np.random.default_rng(1)
    g = np.round(rng.random(300), 2)  # ties between frames, as refinement's gate scores have
    y = rng.random(300) < 0.45
    g[np.flatnonzero(y)[:12]] = -1.0  # calcified frames the decoder never draws: the ceiling
    g[np.flatnonzero(~y)[:5]] = -1.0
    c = fc.frame_curve(g, y)
    assert np.all(np.diff(c["thresholds"]) < 0) and len(c["thresholds"]) == len(np.unique(g[g >= 0]))
    for t, sens, spec in zip(c["thresholds"], c["sensitivity"], c["specificity"]):
        assert sens == pytest.approx(np.mean(g[y] >= t)) and spec == pytest.approx(np.mean(g[~y] < t))
    assert c["ceiling"] == pytest.approx(1 - 12 / y.sum()) == pytest.approx(c["sensitivity"][-1])
    assert np.all(np.diff(c["sensitivity"]) >= 0) and np.all(np.diff(c["specificity"]) <= 0)
    # The specificity at a sensitivity (calibrate's frame-only point) is the curve's at the highest threshold
    # reaching it; beyond the ceiling, none.
    for target in (0.3, 0.5, 0.8, c["ceiling"]):
        j = int(np.argmax(c["sensitivity"] >= target - 1e-12))
        assert fc.specificity_at(g, y, target) == pytest.approx(c["specificity"][j]) and c["sensitivity"][j - 1] < target
    assert fc.specificity_at(g, y, c["ceiling"] + 0.01) is None


def test_the_figure_is_written_where_asked_and_leaves_the_model_files_alone(tmp_path):
    """figure() once wrote its PNG over the last model file (a loop variable shadowed the output path)."""
    fc = load("frame_curves")
    models = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for m in models:
        m.write_bytes(b"weights")
    c = fc.frame_curve(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1, 1, 0, 0], bool))
    row = {"ceiling": c["ceiling"], "calcified_frames": 2, "calcium_free_frames": 2,
           "card": {"sensitivity": 1.0, "specificity": 0.5},
           "curve": {k: c[k].tolist() for k in ("thresholds", "sensitivity", "specificity")}}
    out = {"panels": [{"pools": ["p"], "models": {str(m): row for m in models}}]}
    fc.figure(out, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert all(m.read_bytes() == b"weights" for m in models)


def test_paired_bootstrap_resamples_patients_not_frames():
    """Four copies of every frame within its patient add no information: a patient-level bootstrap gives the same
    difference and the same interval (a frame-level one would narrow it by half)."""
    from CACIdentifierLib.metrics import roc_auc

    fc = load("frame_curves")
    rng = np.random.default_rng(3)
    y = np.repeat(rng.random(30) < 0.5, 6)
    groups = np.repeat(np.arange(30), 6)
    a = y + rng.normal(0, 1.2, y.size)
    b = y + rng.normal(0, 1.0, y.size)
    one = fc.paired_bootstrap(a, b, y, groups, n=300, seed=5, levels=(0.8,))
    assert one["frame_auc"]["difference"] == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    assert one["frame_auc"]["low"] < one["frame_auc"]["difference"] < one["frame_auc"]["high"]
    order = np.argsort(np.tile(np.arange(y.size), 4), kind="stable")  # each frame's copies beside it, same patient
    four = fc.paired_bootstrap(np.tile(a, 4)[order], np.tile(b, 4)[order], np.tile(y, 4)[order],
                               np.tile(groups, 4)[order], n=300, seed=5, levels=(0.8,))
    for key in ("frame_auc", "specificity_at_0.8"):
        for k in ("difference", "low", "high"):
            assert four[key][k] == pytest.approx(one[key][k])
    with pytest.raises(ValueError, match="at least one resample"):
        fc.paired_bootstrap(a, b, y, groups, n=0)


def test_display_shift_pairs_only_the_frames_whose_truth_both_panels_share():
    """display_shift.shift: processed minus plain on the shared-truth frames; refuses panels of other patients."""
    ds = load("display_shift")
    fc = load("frame_curves")
    rng = np.random.default_rng(3)
    y = np.repeat(rng.random(40) < 0.5, 5)
    groups = np.repeat(np.arange(40), 5)
    plain = {"gate": y + rng.normal(0, 0.7, y.size), "truth": y, "groups": groups}
    y2 = y.copy()
    y2[[0, 7, 19]] = ~y2[[0, 7, 19]]  # the annotators saw three frames differently
    processed = {"gate": plain["gate"] - 0.5 * y, "truth": y2, "groups": groups}
    s = ds.shift(plain, processed, n=50)
    keep = y == y2
    want = fc.paired_bootstrap(plain["gate"][keep], processed["gate"][keep], y[keep], groups[keep], 50)
    assert (s["frames"], s["frames_same_truth"], s["calcified"]) == (200, 197, [int(y.sum()), int(y2.sum())])
    assert s["processed_minus_plain"]["frame_auc"] == want["frame_auc"]
    assert s["processed_minus_plain"]["frame_auc"]["difference"] < 0
    with pytest.raises(ValueError, match="same patients"):
        ds.shift(plain, dict(processed, groups=groups[::-1]), n=5)
