"""benchmarks/pool_cache.py: a pool made once is read back as it was, without making it again."""

from __future__ import annotations

import numpy as np
from benchmark_scripts import load


def _frames(n: int = 2):
    from CACTrainerLib import dataset as D

    rng = np.random.default_rng(0)
    return D.FrameSet(rng.random((n, 512, 512)).astype(np.float16), rng.random((n, 512, 512)).astype(np.float16),
                      rng.random((n, 512, 512)) > 0.99, rng.random((n, 512, 512)) > 0.9,
                      rng.random((n, 5)).astype(np.float32), np.full((n, 2), 0.3), np.arange(n), np.arange(n) + 5,
                      rng.random((n, 5)) > 0.5, np.zeros((n, 0, 0), np.float16), ["a", "b"], ["p", "q"])


def test_a_cached_pool_reads_back_equal_and_is_not_made_twice(tmp_path):
    pool_cache = load("pool_cache")
    made = []

    def make():
        made.append(1)
        return _frames()

    first = pool_cache.cached_pool(tmp_path, "val2-0", make)
    again = pool_cache.cached_pool(tmp_path, "val2-0", make)
    assert made == [1]
    for name in ("nc", "c", "calcium", "roi", "labels", "spacing_mm", "frame_index", "contrast_index", "metal",
                 "background"):
        a, b = np.asarray(getattr(first, name)), np.asarray(getattr(again, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert again.acquisition == ["a", "b"] and again.patient == ["p", "q"]
    assert pool_cache.cached_pool(None, "val2-0", make) is not first and made == [1, 1]  # no cache: made anew


def test_frame_score_and_compare_models_name_a_pool_alike():
    """The two scripts share a cache only if they name the same pool the same."""
    pool_cache = load("pool_cache")
    assert pool_cache.test_pool_name(36, "3000,4000") == pool_cache.test_pool_name(36, [3000, 4000])
    assert pool_cache.test_pool_name(36, [3000], 0.5) == "test36-3000-dp0.5"
