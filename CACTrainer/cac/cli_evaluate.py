"""``cac evaluate``: predicted ROIs against annotations, frame by frame.

Compares a predicted ROI segmentation (``.seg.nrrd``, e.g. from ``cac
identify``) with one or several annotators' segmentations of the same cine;
several annotators are combined by strict majority vote (the paper's ground
truth).  The union of a file's segments is used unless ``--segment`` names
one.  The files are aligned in physical space first
(:mod:`CACIdentifierLib.seg_align`): files saved cropped, with other extents
or origins are the same frames; another spacing or frame count is refused.

Per frame where either mask is non-empty: IoM, HD (mm), ROI area (mm2, % of
the frame), ROI precision (fraction of the ROI inside the truth), whether AI
and annotators mark calcium and agree, how many annotators marked calcium;
and the summary (median, quartiles; presence agreement over all frames).
See :mod:`CACIdentifierLib.metrics` for the conventions.  Text, ``--json``
and ``--csv FILE`` give the same table.
"""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
from CACIdentifierLib.errors import CacError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="IoM and Hausdorff distance (mm) of predicted ROIs against annotations",
        description=(
            "Compare PRED.seg.nrrd with the annotations TRUTH.seg.nrrd (several files: several annotators, "
            "combined by strict majority vote). Prints the intersection over minimum (IoM) and the Hausdorff "
            "distance (HD, mm) per frame where either mask is non-empty, and their median (Q1-Q3)."
        ),
    )
    p.add_argument("pred", help="predicted ROI segmentation (.seg.nrrd)")
    p.add_argument("truth", nargs="+", help="annotation segmentation(s) (.seg.nrrd); several = majority vote")
    p.add_argument("--segment", metavar="NAME", help="use only this segment of each file (default: union of all)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.add_argument("--csv", metavar="FILE", help="write the per-frame table as CSV (- for stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.set_defaults(func=run)


def _mask_of(segments: dict, path: str, segment: str | None) -> np.ndarray:
    """The union of ``segments`` (name -> mask), or the one named ``segment``."""
    if segment is None:
        return np.any(np.stack(list(segments.values())), axis=0)
    if segment not in segments:
        names = ", ".join(sorted(segments)) or "none"
        raise CacError(f"{path} has no segment {segment!r} (it has: {names}); check --segment")
    return np.asarray(segments[segment], dtype=bool)


def evaluate_files(pred_path, truth_paths, segment: str | None = None) -> dict:
    """Read the files, align them in physical space and return :func:`metrics.evaluate_masks`'s result.

    Each frame row also gets ``annotators_with_calcium`` (how many of the
    truth files mark calcium there); the result gets ``grid``: the common
    grid's shape and where each file lies on it.
    """
    from CACIdentifierLib import nrrd_io
    from CACIdentifierLib.metrics import evaluate_masks, majority_vote
    from CACIdentifierLib.seg_align import align_segfiles

    pred = nrrd_io.read_seg_nrrd(pred_path)
    truths = [nrrd_io.read_seg_nrrd(p) for p in truth_paths]
    files = [pred, *truths]
    for f in files:
        _mask_of(f.segments, f.path, segment)  # one clear line for a missing segment, before aligning
    aligned, grid = align_segfiles(files)
    masks = [_mask_of(a, f.path, segment) for f, a in zip(files, aligned)]
    truth = majority_vote(masks[1:])
    result = evaluate_masks(masks[0], truth, grid.spacing_mm)
    for row in result["frames"]:
        row["annotators_with_calcium"] = int(sum(bool(m[row["index"]].any()) for m in masks[1:]))
    result["grid"] = {"shape": list(grid.shape), "spacing_mm": list(grid.spacing_mm),
                      "offsets": {str(p): list(o) for p, o in zip((pred_path, *truth_paths), grid.offsets)}}
    return result


COLUMNS = ("index", "iom", "hd_mm", "roi_area_mm2", "roi_area_pct", "roi_precision", "ai_calcium",
           "truth_calcium", "annotators_with_calcium", "agree")


def table_csv(result: dict) -> str:
    """The per-frame table as CSV text (empty cells where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in result["frames"]:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return out.getvalue()


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run(args) -> int:
    result = evaluate_files(args.pred, args.truth, args.segment)
    if args.csv:
        text = table_csv(result)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            from CACIdentifierLib.fileutil import atomic_output

            with atomic_output(args.csv, args.overwrite) as tmp:
                tmp.write_text(text)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.csv == "-":
        return 0
    n = len(args.truth)
    print(f"prediction: {args.pred}")
    print(f"truth: {args.truth[0]}" if n == 1 else f"truth: majority vote of {n} annotations")
    print(f"{'frame':>6} {'IoM':>6} {'HD (mm)':>9} {'ROI mm2':>9} {'ROI %':>6} {'prec.':>6} {'AI':>4} "
          f"{'truth':>5} {'agree':>5}")
    yes = {True: "yes", False: "no"}
    for f in result["frames"]:
        print(f"{f['index']:>6} {_fmt(f['iom'], 3):>6} {_fmt(f['hd_mm'], 2):>9} {_fmt(f['roi_area_mm2'], 1):>9} "
              f"{_fmt(f['roi_area_pct'], 1):>6} {_fmt(f['roi_precision'], 3):>6} {yes[f['ai_calcium']]:>4} "
              f"{yes[f['truth_calcium']]:>5} {yes[f['agree']]:>5}")
    if not result["frames"]:
        print("(both segmentations are empty on every frame)")
    for key, label, digits in (("iom", "IoM", 2), ("hd_mm", "HD (mm)", 2), ("roi_precision", "ROI precision", 2)):
        s = result["summary"][key]
        print(f"{label}: {_fmt(s['median'], digits)} ({_fmt(s['q1'], digits)}-{_fmt(s['q3'], digits)}) median (Q1-Q3)")
    pr = result["summary"]["presence"]
    print(f"calcium presence: AI and annotators agree on {pr['both'] + pr['neither']} of {pr['frames']} frames "
          f"(both {pr['both']}, AI only {pr['ai_only']}, annotators only {pr['truth_only']}, neither {pr['neither']})")
    return 0
