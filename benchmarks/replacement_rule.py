"""Issue 12's replacement rule for a stage-1 candidate: refit, operating point, fresh panels, verdict.

    python benchmarks/replacement_rule.py STAGE1.safetensors --work DIR --test-seed 47000,48000,49000,50000
        [--default Resources/Models/cac_default.safetensors] [--island-sizes 500,250,100] [--val 72]
        [--bootstrap 2000] [--dry-run] -- TRAIN_ARGS...

The rules RULE54 and RULE55 (docs/learning.md) judge a candidate classifier the same way, in five steps;
each is skipped when its output is already in ``--work``, so the script resumes where it stopped:

1. ``refit.safetensors``: the decoder refitted on the calcium patches (``cac train TRAIN_ARGS --init STAGE1
   --epochs1 0 --epochs2 2 --decoder-patches positive --keep-epochs``), as the shipped default's was;
2. ``match.safetensors``: Platt calibration and the operating point on the validation patients, matched to
   the default's fp32 frame sensitivity there (``compare_models.py --match-first``).  Where no island size
   and threshold reach it, the candidate is not adopted and the script stops there;
3. ``fs_plain.json`` and ``fs_processed.json``: both cards on two fresh panels of the same new patients,
   plain and through XA display processing (``frame_score.py``, passes cached in ``--work``/cache);
4. ``curves.json``: both cards' frame curves on the two panels, the paired differences with 95 % intervals
   over resamples of patients (``frame_curves.py --bootstrap``);
5. ``decision.json`` and ``decision.txt``: :func:`verdict`.

``TRAIN_ARGS`` (after ``--``) are the stage-1 command's data and speed options (``--phantom-pool 260
--refresh-patients 40 --seed 0 --recipe default --channels-last --threads 2 --workers 0``), so that the refit
sees the same patients.  The rule's panels must be new to both models: give seeds no earlier rule used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pool_cache import test_pool_name  # noqa: E402

DEFAULT = HERE.parent / "Resources" / "Models" / "cac_default.safetensors"


def verdict(plain: dict, curves: dict, default: str, candidate: str, max_auc_loss: float = 0.01) -> dict:
    """RULE54's three conditions for a candidate to replace the shipped default.

    Parameters
    ----------
    plain : dict
        frame_score.py's JSON on the plain panel, both cards (``models[path]["card"]["test"]``).
    curves : dict
        frame_curves.py's JSON with ``--bootstrap``: panel 0 plain, panel 1 processed, the candidate's
        ``minus_first`` against the default.
    default, candidate : str
        The two cards' paths as the scripts were given them (their keys in both JSONs).
    max_auc_loss : float
        A2's margin: the plain panel's frame AUC may fall by at most this much.

    Returns
    -------
    dict
        ``A1`` (processed panel: the frame-AUC difference's 95 % interval lies above 0), ``A2`` (plain panel:
        its upper end above 0 and the difference at least ``-max_auc_loss``), ``A3`` (plain panel: better on
        every item-4 measure, compare_models.item4_verdict), each with its figures and ``met``; ``adopt``: all
        three met.

    Examples
    --------
    >>> def card(sens, spec, area, prec):
    ...     return {"card": {"test": {"frame_detection": {"sensitivity": sens, "specificity": spec},
    ...                               "roi_area_pct_field": {"median": area}, "roi_precision": {"median": prec}}}}
    >>> def diff(d, lo, hi):
    ...     return {"models": {"c": {"minus_first": {"frame_auc": {"difference": d, "low": lo, "high": hi}}}}}
    >>> plain = {"models": {"d": card(0.942, 0.187, 1.02, 0.42), "c": card(0.920, 0.262, 0.99, 0.52)}}
    >>> v = verdict(plain, {"panels": [diff(0.080, 0.025, 0.133), diff(0.135, 0.058, 0.215)]}, "d", "c")
    >>> v["A1"]["met"], v["A2"]["met"], v["A3"]["met"], v["A3"]["worse_on"], v["adopt"]
    (True, True, False, ['frame_sensitivity'], False)
    >>> plain["models"]["c"] = card(0.95, 0.262, 0.99, 0.52)
    >>> verdict(plain, {"panels": [diff(-0.005, -0.04, 0.03), diff(0.02, 0.001, 0.04)]}, "d", "c")["adopt"]
    True
    >>> verdict(plain, {"panels": [diff(-0.02, -0.05, 0.01), diff(0.02, 0.001, 0.04)]}, "d", "c")["A2"]["met"]
    False
    """
    from compare_models import item4_verdict

    plain_panel, processed_panel = curves["panels"][0], curves["panels"][1]
    a1 = dict(processed_panel["models"][candidate]["minus_first"]["frame_auc"])
    a1["met"] = a1["low"] is not None and a1["low"] > 0
    a2 = dict(plain_panel["models"][candidate]["minus_first"]["frame_auc"])
    a2["met"] = a2["high"] is not None and a2["high"] > 0 and a2["difference"] >= -max_auc_loss
    item4 = item4_verdict(plain["models"][default]["card"]["test"], plain["models"][candidate]["card"]["test"])
    a3 = {"measures": item4["measures"], "worse_on": item4["worse_on"], "met": item4["beats_every"]}
    return {"A1": a1, "A2": a2, "A3": a3, "adopt": a1["met"] and a2["met"] and a3["met"]}


def report(v: dict) -> str:
    """The verdict in a few lines, for decision.txt.

    Examples
    --------
    >>> m = {"frame_sensitivity": {"first": 0.942, "other": None, "verdict": "worse"}}
    >>> v = {"adopt": False, "A3": {"measures": m, "worse_on": ["frame_sensitivity"], "met": False},
    ...      "A1": {"difference": 0.1, "low": 0.05, "high": 0.2, "met": True},
    ...      "A2": {"difference": 0.0, "low": -0.02, "high": 0.03, "met": True}}
    >>> print(report(v), end="")
    KEEP the shipped default
    A1 (processed panel, frame AUC candidate - default): +0.100 (95 % +0.050..+0.200): met
    A2 (plain panel, frame AUC candidate - default): +0.000 (95 % -0.020..+0.030): met
    A3 (plain panel, item 4): frame_sensitivity 0.942 -> -- worse: not met (worse on frame_sensitivity)
    """
    def fmt(x):
        return "--" if x is None else f"{x:.3f}"

    lines = ["ADOPT" if v["adopt"] else "KEEP the shipped default"]
    for key, panel in (("A1", "processed"), ("A2", "plain")):
        a = v[key]
        lines.append(f"{key} ({panel} panel, frame AUC candidate - default): {a['difference']:+.3f} "
                     f"(95 % {a['low']:+.3f}..{a['high']:+.3f}): {'met' if a['met'] else 'not met'}")
    m = v["A3"]["measures"]
    lines.append("A3 (plain panel, item 4): " + "; ".join(
        f"{k} {fmt(x['first'])} -> {fmt(x['other'])} {x['verdict']}" for k, x in m.items())
        + (": met" if v["A3"]["met"] else f": not met (worse on {', '.join(v['A3']['worse_on']) or 'none'})"))
    return "\n".join(lines) + "\n"


def steps(stage1: str, work: Path, seeds: str, train_args: list[str], default: str, island_sizes: str,
          val: int, bootstrap: int) -> list[tuple[str, list[str]]]:
    """The rule's commands, each with the file whose presence means it is done.

    Examples
    --------
    >>> s = steps("c.safetensors", Path("w"), "47000,48000", ["--seed", "0"], "d.safetensors", "500,250", 72, 9)
    >>> [Path(out).name for out, _ in s]
    ['refit.safetensors', 'match.safetensors', 'fs_plain.json', 'fs_processed.json', 'curves.json']
    >>> s[-1][1][-4:]  # the panels frame_score.py cached, by pool_cache's names
    ['--pools', 'test36-47000_48000', '--pools', 'test36-47000_48000-dp1']
    """
    py, bench = sys.executable, HERE
    refit, match, cache = str(work / "refit.safetensors"), str(work / "match.safetensors"), str(work / "cache")
    score = [py, str(bench / "frame_score.py"), default, match, "--test-seed", seeds, "--cache", cache]
    return [
        (refit, [py, "-m", "cac", "train", *train_args, "--init", stage1, "--epochs1", "0", "--epochs2", "2",
                 "--decoder-patches", "positive", "--keep-epochs", "--out", refit,
                 "--run-dir", str(work / "run_refit"), "--json"]),
        (match, [py, str(bench / "compare_models.py"), default, refit, "--calibrate", match, "--sensitivity",
                 "0.855", "--match-first", "--island-sizes", island_sizes, "--val", str(val), "--cache", cache,
                 "--out", str(work / "compare.json")]),
        (str(work / "fs_plain.json"), [*score, "--out", str(work / "fs_plain.json")]),
        (str(work / "fs_processed.json"), [*score, "--display-processing", "1",
                                           "--out", str(work / "fs_processed.json")]),
        (str(work / "curves.json"), [py, str(bench / "frame_curves.py"), default, match, "--cache", cache,
                                     "--bootstrap", str(bootstrap), "--png", str(work / "curves.png"),
                                     "--out", str(work / "curves.json"),
                                     "--pools", test_pool_name(36, seeds), "--pools", test_pool_name(36, seeds, 1)]),
    ]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage1", help="the candidate's stage-1 card")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--test-seed", required=True, help="comma-separated seeds of the fresh panels (36 patients each)")
    ap.add_argument("--default", default=str(DEFAULT))
    ap.add_argument("--island-sizes", default="500,250,100")
    ap.add_argument("--val", type=int, default=72)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--dry-run", action="store_true", help="print the commands still to run and stop")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    from script_entry import check_models

    check_models([args.stage1, args.default])
    if not train_args:  # the refit would fail after the rest was set up, or see other patients
        ap.error("give the stage-1 command's data and speed options after --, e.g. -- --phantom-pool 260 --seed 0")
    if not args.dry_run:
        args.work.mkdir(parents=True, exist_ok=True)
    for out, cmd in steps(args.stage1, args.work, args.test_seed, train_args, args.default, args.island_sizes,
                          args.val, args.bootstrap):
        if Path(out).exists():
            continue
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        rc = subprocess.call(cmd)
        if rc != 0 and out.endswith("match.safetensors"):
            text = "KEEP the shipped default: no operating point reaches the default's validation sensitivity\n"
            (args.work / "decision.txt").write_text(text)
            print(text, end="")
            return 0
        if rc != 0:
            print(f"replacement_rule.py: error: step failed (exit {rc}); fix it and run again to resume",
                  file=sys.stderr)
            return 2
    if args.dry_run:
        return 0
    v = verdict(json.loads((args.work / "fs_plain.json").read_text()),
                json.loads((args.work / "curves.json").read_text()), args.default, str(args.work / "match.safetensors"))
    (args.work / "decision.json").write_text(json.dumps(v, indent=1, default=float) + "\n")
    (args.work / "decision.txt").write_text(report(v))
    print(report(v), end="")
    return 0


if __name__ == "__main__":
    from script_entry import run

    raise SystemExit(run(main))
