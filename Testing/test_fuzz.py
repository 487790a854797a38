"""The fast subset of the input fuzzing harness (benchmarks/fuzz_inputs.py): every outcome clean.

A few hundred mutants of the real files in ../shared/data and of the project's phantom output,
model, manifest and checkpoint (fixed seed), each run through a command with a time and memory
limit.  Any traceback, hang, memory blow-up, crash or unprintable error fails the test and the
harness prints the case's mutation and how to rerun it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]


@needs_data
@pytest.mark.slow
def test_fast_fuzz_subset(tmp_path):
    out = tmp_path / "fuzz"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_inputs.py"), "--seed", "0", "--count", "240", "--fast",
         "--timeout", "60", "--workers", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 240
    bad = {k: v for k, v in summary["outcomes"].items() if k not in ("ok", "clean-error") and v}
    assert not bad, proc.stdout[-4000:]
    # The mutants exercised both paths: files that still load and files refused with one line.
    assert summary["outcomes"]["ok"] > 20 and summary["outcomes"]["clean-error"] > 20
    assert len(summary["by_kind"]) >= 7


def test_narrowed_kinds_still_reach_the_model_base_and_rerun_with_their_kinds(tmp_path):
    """`--kinds dicom` once dropped the model base that an `identify` case needs (a KeyError that ended the run);
    a case of a narrowed run is drawn from the narrowed kinds and its recipe reruns it with them."""
    import numpy as np
    from benchmark_scripts import load

    fz = load("fuzz_inputs")
    dcm = tmp_path / "x.dcm"
    dcm.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    bases = {"dicom": [dcm], "model": [tmp_path / "model.safetensors"]}
    commands = set()
    for i in range(400):
        case_dir = tmp_path / f"c{i}"
        case_dir.mkdir()
        case = fz.make_case(i, 6, bases, case_dir, False, ["dicom"])
        assert case.kind == "dicom"
        commands.add(str(case.argv[0]))
        if case.argv[0] == "identify":
            assert str(bases["model"][0]) in [str(a) for a in case.argv]
    assert "identify" in commands, commands
    assert "--kinds dicom" in fz.recipe(case, 6, "traceback", "", False, "dicom")
