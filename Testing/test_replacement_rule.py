"""benchmarks/replacement_rule.py: it resumes where it stopped, and an unreachable operating point means "keep".

The steps are replaced by small commands that write their outputs (the real ones train and score for an hour);
the verdict reads the JSON the real scripts write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load

DEFAULT = str(Path(__file__).resolve().parents[1] / "Resources" / "Models" / "cac_default.safetensors")


def _card(sens, spec, area, prec):
    return {"card": {"test": {"frame_detection": {"sensitivity": sens, "specificity": spec},
                              "roi_area_pct_field": {"median": area}, "roi_precision": {"median": prec}}}}


def _fake_steps(work: Path, log: Path, fail_at: str | None = None, fail_code: int = 2):
    """The rule's five outputs, each made by a command that records it ran (or fails at ``fail_at``)."""
    match = str(work / "match.safetensors")
    plain = {"models": {DEFAULT: _card(0.94, 0.19, 1.0, 0.42), match: _card(0.95, 0.26, 0.9, 0.52)}}
    diff = {"minus_first": {"frame_auc": {"difference": 0.08, "low": 0.02, "high": 0.13}}}
    curves = {"panels": [{"models": {match: diff}}, {"models": {match: diff}}]}
    contents = {"refit.safetensors": "", "match.safetensors": "", "fs_plain.json": json.dumps(plain),
                "fs_processed.json": "{}", "curves.json": json.dumps(curves)}

    def steps(*args, **kwargs):
        out = []
        for name, text in contents.items():
            code = (f"import sys; open({str(log)!r}, 'a').write({name!r} + '\\n'); "
                    + (f"sys.exit({fail_code})" if name == fail_at else
                       f"open({str(work / name)!r}, 'w').write({text!r})"))
            out.append((str(work / name), [sys.executable, "-c", code]))
        return out

    return steps


def _main(rule, work):
    return rule.main([DEFAULT, "--work", str(work), "--test-seed", "47000", "--default", DEFAULT, "--", "--seed", "0"])


def test_the_rule_runs_each_step_once_and_writes_its_verdict(tmp_path, monkeypatch, capsys):
    rule = load("replacement_rule")
    work, log = tmp_path / "rule", tmp_path / "ran.txt"
    monkeypatch.setattr(rule, "steps", _fake_steps(work, log, fail_at="fs_processed.json", fail_code=1))
    assert _main(rule, work) == 2  # a step that fails stops the rule, with one line
    assert "step failed (exit 1)" in capsys.readouterr().err
    assert not (work / "decision.txt").exists()
    monkeypatch.setattr(rule, "steps", _fake_steps(work, log))
    assert _main(rule, work) == 0
    ran = log.read_text().split()
    assert ran == ["refit.safetensors", "match.safetensors", "fs_plain.json", "fs_processed.json",
                   "fs_processed.json", "curves.json"], "the second run resumed at the failed step"
    decision = json.loads((work / "decision.json").read_text())
    assert decision["adopt"] and (work / "decision.txt").read_text().startswith("ADOPT")
    assert _main(rule, work) == 0 and len(log.read_text().split()) == len(ran), "nothing runs again"


def test_no_operating_point_means_the_default_stays(tmp_path, monkeypatch):
    rule = load("replacement_rule")
    work, log = tmp_path / "rule", tmp_path / "ran.txt"
    monkeypatch.setattr(rule, "steps", _fake_steps(work, log, fail_at="match.safetensors"))
    assert _main(rule, work) == 0
    assert (work / "decision.txt").read_text().startswith("KEEP the shipped default: no operating point")
    assert log.read_text().split() == ["refit.safetensors", "match.safetensors"], "no panel is scored"


def test_a_missing_candidate_is_refused_before_anything_runs(tmp_path, monkeypatch):
    rule = load("replacement_rule")
    from CACIdentifierLib.errors import CacError

    with pytest.raises(CacError, match="not found"):
        rule.main([str(tmp_path / "none.safetensors"), "--work", str(tmp_path / "w"), "--test-seed", "1"])
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):  # no stage-1 options: the refit would not see the candidate's patients
        rule.main([DEFAULT, "--work", str(tmp_path / "w"), "--test-seed", "1"])
    assert not (tmp_path / "w").exists()
