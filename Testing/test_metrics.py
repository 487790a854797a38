"""Metrics: HD vs SimpleITK, IoM edge cases, precision/recall/F1 by hand, majority vote, summaries."""

import numpy as np
import pytest
import SimpleITK as sitk
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.metrics import (
    auc_difference,
    evaluate_masks,
    hausdorff_mm,
    iom,
    majority_vote,
    median_iqr,
    precision_recall_f1,
    wilcoxon,
)


def sitk_hd(a, b, spacing_rc):
    ia = sitk.GetImageFromArray(a.astype(np.uint8))
    ib = sitk.GetImageFromArray(b.astype(np.uint8))
    for im in (ia, ib):
        im.SetSpacing((spacing_rc[1], spacing_rc[0]))  # SimpleITK: (x=col, y=row)
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(ia, ib)
    return f.GetHausdorffDistance()


@pytest.mark.parametrize("seed", range(6))
def test_hausdorff_matches_simpleitk_anisotropic(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(40, 200)), int(rng.integers(40, 200)))
    a = rng.random(shape) < rng.uniform(0.001, 0.05)
    b = rng.random(shape) < rng.uniform(0.001, 0.05)
    a[rng.integers(shape[0]), rng.integers(shape[1])] = True
    b[rng.integers(shape[0]), rng.integers(shape[1])] = True
    spacing = (float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.1, 0.5)))
    assert hausdorff_mm(a, b, spacing) == pytest.approx(sitk_hd(a, b, spacing), rel=1e-6, abs=1e-9)


def test_hausdorff_known_values_and_empty():
    a = np.zeros((512, 512), bool)
    b = np.zeros_like(a)
    a[10, 10] = True
    b[13, 14] = True
    assert hausdorff_mm(a, b, (1.0, 1.0)) == pytest.approx(5.0)
    assert hausdorff_mm(a, b, (2.0, 0.5)) == pytest.approx(np.hypot(6.0, 2.0))
    a[500, 500] = True  # far pixel of A dominates the directed distance A->B
    assert hausdorff_mm(a, b, (1.0, 1.0)) == pytest.approx(np.hypot(487, 486))
    assert hausdorff_mm(a, np.zeros_like(a), (1, 1)) is None
    assert hausdorff_mm(np.zeros_like(a), np.zeros_like(a), (1, 1)) is None
    with pytest.raises(CacError):
        hausdorff_mm(a, b[:10], (1, 1))


def test_iom_cases():
    a = np.zeros((20, 20), bool)
    b = np.zeros_like(a)
    assert iom(a, b) is None
    a[2:6, 2:6] = True
    assert iom(a, b) == 0.0 and iom(b, a) == 0.0
    b[0:10, 0:10] = True  # a inside b
    assert iom(a, b) == 1.0
    c = np.zeros_like(a)
    c[4:8, 2:6] = True  # 8 of 16 px overlap a
    assert iom(a, c) == pytest.approx(0.5)


def test_precision_recall_f1_hand_counts():
    t = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 0, 1, 1, 0, 0, 1, 0]
    r = precision_recall_f1(t, p)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 3)
    assert r["precision"] == pytest.approx(3 / 4) and r["recall"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    allneg = precision_recall_f1([0, 0], [0, 0])
    assert allneg["precision"] == allneg["recall"] == allneg["f1"] == 1.0
    missed = precision_recall_f1([1, 0], [0, 0])
    assert missed["precision"] == 0.0 and missed["recall"] == 0.0 and missed["f1"] == 0.0
    false_alarm = precision_recall_f1([0, 0], [1, 0])
    assert false_alarm["precision"] == 0.0 and false_alarm["recall"] == 0.0 and false_alarm["f1"] == 0.0
    with pytest.raises(CacError):
        precision_recall_f1([1], [1, 0])


def test_majority_vote_strict():
    m = [np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool), np.array([0, 0, 1, 0, 1], bool)]
    np.testing.assert_array_equal(majority_vote(m), [True, False, True, False, True])
    np.testing.assert_array_equal(majority_vote(m[:2]), [True, False, False, False, True])  # 1 of 2 is not >half
    np.testing.assert_array_equal(majority_vote(m[:1]), m[0])
    with pytest.raises(CacError):
        majority_vote([])
    with pytest.raises(CacError):
        majority_vote([m[0], m[0][:3]])


def test_median_iqr_and_wilcoxon():
    s = median_iqr([1, None, 2, 3, float("nan"), 4])
    assert s == {"median": 2.5, "q1": 1.75, "q3": 3.25, "n": 4}
    assert median_iqr([None])["median"] is None
    from scipy import stats

    a = [0.5, 0.7, 0.6, 0.9, 0.8, 0.65, 0.72, None]
    b = [0.4, 0.5, 0.65, 0.7, 0.6, 0.5, 0.6, 0.3]
    w = wilcoxon(a, b)
    ref = stats.wilcoxon(a[:7], b[:7])
    assert w["n"] == 7 and w["p"] == pytest.approx(ref.pvalue) and w["statistic"] == pytest.approx(ref.statistic)
    assert wilcoxon([1, 2], [1, 2])["p"] is None


def test_auc_difference_matches_scipy_bootstrap_with_one_item_per_group():
    # With every item its own group the cluster bootstrap is the ordinary paired bootstrap, which
    # scipy.stats.bootstrap computes independently (its own resampling): the percentile intervals must
    # agree within Monte Carlo error, and the point estimate exactly.
    from scipy import stats

    rng = np.random.default_rng(5)
    y = np.r_[np.ones(60, bool), np.zeros(90, bool)]
    a = y * 0.6 + rng.normal(size=y.size)
    b = y * 1.2 + rng.normal(size=y.size)
    r = auc_difference(y, a, b, np.arange(y.size), n_boot=3000, seed=1)

    def diff(yy, aa, bb):
        from CACIdentifierLib.metrics import roc_auc

        return roc_auc(yy, bb) - roc_auc(yy, aa)

    ref = stats.bootstrap((y, a, b), diff, paired=True, vectorized=False, n_resamples=3000,
                          method="percentile", random_state=2)
    from CACIdentifierLib.metrics import roc_auc

    assert r["diff"] == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    assert r["n_boot"] == 3000
    assert r["ci95"][0] == pytest.approx(ref.confidence_interval.low, abs=0.015)
    assert r["ci95"][1] == pytest.approx(ref.confidence_interval.high, abs=0.015)


def test_auc_difference_resamples_patients_not_items():
    # b is perfect in patient 0 and no better than a elsewhere: with items as the unit the gain would look
    # certain; resampling patients puts "no gain" inside the interval.
    rng = np.random.default_rng(0)
    y = np.tile([True, False], 200)
    patient = np.repeat(np.arange(8), 50)
    a = rng.normal(size=y.size) + 0.3 * y
    b = a.copy()
    b[patient == 0] = y[patient == 0] * 10.0
    by_patient = auc_difference(y, a, b, patient, n_boot=500)
    by_item = auc_difference(y, a, b, np.arange(y.size), n_boot=500)
    assert by_patient["diff"] == by_item["diff"] > 0
    assert by_item["ci95"][0] > 0
    assert by_patient["ci95"][0] <= 0 < by_patient["share_le_0"]
    same = auc_difference(y, a, a, patient, n_boot=50)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="one class"):
        auc_difference(np.ones(4), a[:4], b[:4], patient[:4])
    with pytest.raises(ValueError, match="length"):
        auc_difference(y, a, b[:-1], patient)


def test_evaluate_masks():
    pred = np.zeros((4, 64, 64), bool)
    truth = np.zeros_like(pred)
    pred[0, 10:20, 10:20] = True
    truth[0, 12:16, 12:16] = True  # enclosed: IoM 1
    truth[1, 5:8, 5:8] = True  # missed: IoM 0, HD undefined
    pred[3, 30:40, 30:40] = True
    truth[3, 30:40, 35:45] = True  # half overlap
    out = evaluate_masks(pred, truth, (0.5, 0.5))
    assert [f["index"] for f in out["frames"]] == [0, 1, 3]
    assert [f["iom"] for f in out["frames"]] == [1.0, 0.0, 0.5]
    assert out["frames"][1]["hd_mm"] is None
    assert out["frames"][0]["hd_mm"] == pytest.approx(0.5 * np.hypot(4, 4))
    assert out["summary"]["iom"] == {"median": 0.5, "q1": 0.25, "q3": 0.75}
    assert set(out["summary"]["hd_mm"]) == {"median", "q1", "q3"}
