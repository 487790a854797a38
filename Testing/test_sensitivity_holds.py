"""benchmarks/sensitivity_holds.py: the patient-clustered lower bound of a frame sensitivity (measured as a rule for
``cac calibrate``'s operating point, not adopted; docs/learning.md)."""

import numpy as np
import pytest
from benchmark_scripts import load


def test_sensitivity_bound_agrees_with_clopper_pearson_for_independent_frames_and_counts_patients():
    """The bound against scipy's exact binomial interval when every frame is its own patient, and the cluster
    effect: a patient's frames duplicated change nothing, while the same frames taken as independent give a
    tighter (higher) bound."""
    sensitivity_bound = load("sensitivity_holds").sensitivity_bound
    from scipy import stats

    rng = np.random.default_rng(0)
    n = 400
    g = rng.random(n)
    y = np.ones(n, bool)
    levels, sens, bound = sensitivity_bound(g, y, np.arange(n), 0.9)
    assert np.all(np.diff(levels) < 0) and np.all(np.diff(sens) > 0) and np.all(np.diff(bound) >= 0)
    for j in (n // 2, int(0.9 * n), int(0.97 * n)):  # frame sensitivity 0.5, 0.9, 0.97
        found = round(sens[j] * n)
        ref = stats.binomtest(found, n).proportion_ci(confidence_level=0.8, method="exact").low  # one-sided 0.9
        assert bound[j] == pytest.approx(ref, abs=0.006), j
        assert bound[j] < sens[j]
    # Everything found: the one-sided exact bound of n of n, n the number of patients.
    assert bound[-1] == pytest.approx(0.1 ** (1 / n))
    # 50 patients of 8 frames that share their gate score: as 50 frames, not 400.
    gp = np.repeat(rng.random(50), 8)
    groups = np.repeat(np.arange(50), 8)
    _, s_cl, b_cl = sensitivity_bound(gp, np.ones(400, bool), groups, 0.9)
    _, s_one, b_one = sensitivity_bound(gp[::8], np.ones(50, bool), np.arange(50), 0.9)
    np.testing.assert_allclose(s_cl, s_one)
    np.testing.assert_allclose(b_cl, b_one, atol=1e-12)
    _, _, b_ind = sensitivity_bound(gp, np.ones(400, bool), np.arange(400), 0.9)
    assert np.mean(b_ind[5:-5] - b_cl[5:-5]) > 0.03
    # Calcium-free frames and frames without any ROI are not levels; a frame never found keeps the bound down.
    y2 = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    g2 = np.r_[rng.random(45), np.full(5, -1.0), rng.random(50)]
    lv, s2, b2 = sensitivity_bound(g2, y2, np.arange(100) // 2, 0.95)
    assert len(lv) == 45 and s2[-1] == pytest.approx(0.9) and b2[-1] < 0.9
    with pytest.raises(ValueError, match="confidence"):
        sensitivity_bound(g2, y2, np.arange(100), 1.0)


def test_a_confident_operating_point_holds_its_sensitivity_on_new_patients_where_the_plain_one_does_not():
    """Simulated patients (a patient's frames share a detectability, so they move together): 200 calibration draws
    of 40 patients each, the sensitivity at the chosen threshold measured on the whole population.  The plain
    point falls short of the target about half the time; the point at 90 % confidence rarely does."""
    holds = load("sensitivity_holds")

    rng = np.random.default_rng(1)
    n_pat, per = 4000, 6
    patient = rng.normal(0.0, 1.0, n_pat)  # detectability shared by a patient's frames
    def score(x):  # a gate score is a probability (a negative one would read as "no ROI")
        return 1.0 / (1.0 + np.exp(-x))

    pop = score(patient[:, None] + 0.5 * rng.normal(size=(n_pat, per))).ravel()
    target, short_plain, short_conf = 0.9, 0, 0
    for _ in range(200):
        pick = rng.choice(n_pat, 40, replace=False)
        g = score(patient[pick, None] + 0.5 * rng.normal(size=(40, per))).ravel()
        groups = np.repeat(np.arange(40), per)
        plain = np.sort(g)[::-1][int(np.ceil(target * g.size)) - 1]
        level, bound, _ = holds.confident_level(g, np.ones(g.size, bool), groups, target, 0.9)
        assert level <= plain and bound >= target
        short_plain += (pop >= plain).mean() < target
        short_conf += (pop >= level).mean() < target
    assert 60 <= short_plain <= 140  # about half of 200
    assert short_conf <= 30  # about 10 % of 200 or fewer
