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
    # The specificity at a sensitivity is read at the highest threshold reaching it; beyond the ceiling, none.
    j = int(np.argmax(c["sensitivity"] >= 0.5))
    assert fc.specificity_at(c, 0.5) == c["specificity"][j] and c["sensitivity"][j - 1] < 0.5
    assert fc.specificity_at(c, c["ceiling"] + 0.01) is None
