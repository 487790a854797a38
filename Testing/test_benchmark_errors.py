"""The benchmark scripts end as ``cac`` does on a wrong path: one line, exit 2, nothing made first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, extra", [
    ("frame_score.py", ["--cache", "{cache}"]),  # made 9 minutes of pools before reading the model
    ("compare_models.py", []),
    ("frame_curves.py", ["--cache", "{cache}", "--pools", "p"]),  # a traceback from stat
    ("display_shift.py", ["--cache", "{cache}", "--pool", "p"]),
    ("difficulty.py", []),
    ("position_auc.py", ["--cache", "{cache}", "--pool", "p"]),  # here the pool is missing too
    ("replacement_rule.py", ["--work", "{cache}", "--test-seed", "47000"]),  # nothing made before the check
])
def test_a_missing_model_or_pool_is_one_line_and_exit_2(tmp_path, script, extra):
    cache = tmp_path / "cache"
    missing = tmp_path / "no such model.safetensors"
    args = [a.format(cache=cache) for a in extra]
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), str(missing), *args],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), r.stderr[-2000:]
    assert "no such model" in lines[0] or "no pool p" in lines[0]
    assert not cache.exists() or not any(cache.iterdir())  # no pool was generated before the check


@pytest.mark.parametrize("script", ["bench_allocator.py", "bench_identify.py", "bench_network.py",
                                    "bench_phantom.py", "bench_sync.py", "bench_training.py"])
def test_the_benchmarks_without_options_answer_help_and_refuse_an_unknown_one(script):
    """They ignored their arguments: ``--help`` (or a mistyped option) ran minutes of benchmark."""
    first = (BENCHMARKS / script).read_text().split('"""')[1].splitlines()[0]
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and f"usage: {script}" in r.stdout and first in r.stdout, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), "--no-such-option"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "unrecognized arguments: --no-such-option" in r.stderr, r.stderr[-2000:]
    assert r.stdout == ""  # nothing measured
