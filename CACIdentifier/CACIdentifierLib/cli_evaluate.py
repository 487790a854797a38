"""``cac evaluate``: IoM and Hausdorff distance of predicted ROIs against annotations.

Compares a predicted ROI segmentation (``.seg.nrrd``, e.g. from ``cac
identify``) with one or several annotators' segmentations of the same cine;
several annotators are combined by strict majority vote (the paper's ground
truth).  The union of a file's segments is used unless ``--segment`` names
one.  Metrics per frame (frames where either mask is non-empty) and their
median (quartiles): see :mod:`CACIdentifierLib.metrics` for the conventions.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from .errors import CacError


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
    p.set_defaults(func=run)


def _mask_of(seg, segment: str | None) -> np.ndarray:
    if segment is None:
        return seg.union()
    if segment not in seg.segments:
        names = ", ".join(sorted(seg.segments)) or "none"
        raise CacError(f"{seg.path} has no segment {segment!r} (it has: {names}); check --segment")
    return np.asarray(seg.segments[segment], dtype=bool)


def evaluate_files(pred_path, truth_paths, segment: str | None = None) -> dict:
    """Read the files and return :func:`metrics.evaluate_masks`'s result for them."""
    from . import mrml
    from .metrics import evaluate_masks, majority_vote

    pred = mrml.read_seg_nrrd(pred_path)
    truths = [mrml.read_seg_nrrd(p) for p in truth_paths]
    for t in truths:
        if tuple(t.shape) != tuple(pred.shape):
            raise CacError(
                f"{t.path or 'annotation'} has {tuple(t.shape)} (frames, rows, cols) but {pred.path or 'prediction'} "
                f"has {tuple(pred.shape)}; compare segmentations of the same cine"
            )
        if not np.allclose(t.spacing_mm, pred.spacing_mm, rtol=1e-3):
            raise CacError(
                f"{t.path or 'annotation'} has spacing {tuple(t.spacing_mm)} mm but {pred.path or 'prediction'} "
                f"has {tuple(pred.spacing_mm)} mm; compare segmentations of the same cine"
            )
    truth = majority_vote([_mask_of(t, segment) for t in truths])
    return evaluate_masks(_mask_of(pred, segment), truth, pred.spacing_mm)


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run(args) -> int:
    result = evaluate_files(args.pred, args.truth, args.segment)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    n = len(args.truth)
    print(f"prediction: {args.pred}")
    print(f"truth: {args.truth[0]}" if n == 1 else f"truth: majority vote of {n} annotations")
    print(f"{'frame':>6} {'IoM':>6} {'HD (mm)':>9}")
    for f in result["frames"]:
        print(f"{f['index']:>6} {_fmt(f['iom'], 3):>6} {_fmt(f['hd_mm'], 2):>9}")
    if not result["frames"]:
        print("(both segmentations are empty on every frame)")
    for key, label, digits in (("iom", "IoM", 2), ("hd_mm", "HD (mm)", 2)):
        s = result["summary"][key]
        print(f"{label}: {_fmt(s['median'], digits)} ({_fmt(s['q1'], digits)}-{_fmt(s['q3'], digits)}) median (Q1-Q3)")
    return 0
