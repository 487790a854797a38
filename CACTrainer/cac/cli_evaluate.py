"""``cac evaluate``: predicted ROIs against annotations, frame by frame.

Compares a predicted ROI segmentation (``.seg.nrrd``, e.g. from ``cac
identify``) with one or several annotators' segmentations of the same cine;
several annotators are combined by strict majority vote (the paper's ground
truth).  The union of a file's segments is used unless ``--segment`` names
one.  The files are aligned in physical space first
(:mod:`CACIdentifierLib.seg_align`): files saved cropped to their minimum
extent, with other extents or origins are the same frames; another spacing or
frame count is refused, and so is a file drawn over a cropped copy of the
frame-stack volume (its reference geometry has fewer rows or columns than the
largest of the files'), with ``cac dataset add``'s line
(:func:`~CACIdentifierLib.seg_align.check_none_cropped`).
Files that record different source cines (``CAC_source_fingerprint``, written
by ``cac identify``, the phantom, the dataset builder and CAC Annotator) are
refused unless ``--ignore-source``; files that record none are compared with a
warning.  A spacing the files say is unknown (or 1 x 1 mm with no word on it,
the value written for an unknown spacing) gives no HD in mm: pass ``--spacing
MM`` or ``--allow-pixel-units`` (HD and areas in pixels: ``hd_px``,
``roi_area_px``).

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
    p.add_argument("--ignore-source", action="store_true",
                   help="compare files that record different source cines (warns instead of refusing)")
    p.add_argument("--spacing", metavar="MM",
                   help="pixel spacing in mm (one number, or ROW,COL) when the files' spacing is unknown")
    p.add_argument("--onset", type=int, metavar="N",
                   help="first contrast frame (0-based): score only the frames before it, the ones annotators "
                        "mark (default: every frame; contrast frames then count as true negatives)")
    p.add_argument("--allow-pixel-units", action="store_true",
                   help="when the spacing is unknown, give HD and areas in pixels instead of refusing")
    p.set_defaults(func=run)


def _mask_of(segments: dict, path: str, segment: str | None) -> np.ndarray:
    """The union of ``segments`` (name -> mask), or the one named ``segment``."""
    if segment is None:
        return np.any(np.stack(list(segments.values())), axis=0)
    if segment not in segments:
        names = ", ".join(sorted(segments)) or "none"
        raise CacError(f"{path} has no segment {segment!r} (it has: {names}); check --segment")
    return np.asarray(segments[segment], dtype=bool)


def _spacing_unknown(files, grid_spacing) -> str | None:
    """Why the files' spacing is not a known physical spacing, or None when it is."""
    said = [f.spacing_known for f in files]
    if False in said:
        return "the files say the cine's pixel spacing was unknown (1 mm was written)"
    if True not in said and np.allclose(grid_spacing, (1.0, 1.0), rtol=1e-6):
        # Slicer's own files say nothing; exactly 1 x 1 mm is what is written for an unknown spacing and
        # no angiography detector has it.
        return "the files' pixel spacing is 1 x 1 mm, the value written when the spacing is unknown"
    return None


def evaluate_files(pred_path, truth_paths, segment: str | None = None, *, ignore_source: bool = False,
                   spacing_mm=None, allow_pixel_units: bool = False, onset: int | None = None) -> dict:
    """Read the files, align them in physical space and return :func:`metrics.evaluate_masks`'s result.

    Each frame row also gets ``annotators_with_calcium`` (how many of the
    truth files mark calcium there); the result gets ``grid``: the common
    grid's shape and where each file lies on it, and ``units`` (``"mm"``, or
    ``"px"`` with ``allow_pixel_units``: keys ``hd_px``, ``roi_area_px``).
    A file drawn over a cropped copy of the frame-stack volume is refused
    (:func:`~CACIdentifierLib.seg_align.check_none_cropped`), and so are
    files of different source cines unless ``ignore_source``;
    an unknown spacing is refused unless ``spacing_mm`` (row, col) or
    ``allow_pixel_units`` is given.  ``onset`` (the first contrast frame)
    scores only the frames before it, the non-contrast frames annotators mark:
    otherwise every frame counts, and contrast frames, never annotated, count
    as true negatives in the frame specificity.
    """
    from CACIdentifierLib import nrrd_io
    from CACIdentifierLib.metrics import evaluate_masks, majority_vote
    from CACIdentifierLib.seg_align import (
        align_segfiles,
        check_none_cropped,
        check_same_source,
        warn_unrecorded,
    )

    pred = nrrd_io.read_seg_nrrd(pred_path)
    truths = [nrrd_io.read_seg_nrrd(p) for p in truth_paths]
    files = [pred, *truths]
    for f in files:
        _mask_of(f.segments, f.path, segment)  # one clear line for a missing segment, before aligning
    aligned, grid = align_segfiles(files)  # another geometry is another cine: that error first
    sources = [(f.path, f.source_fingerprint) for f in files]
    check_same_source(sources, ignore=ignore_source, warn_missing=False)
    check_none_cropped(files)  # on the same lattice, but drawn over a cropped copy of the volume: placed by nothing
    warn_unrecorded(sources)  # after the refusals: a refused file gets its one line only
    masks = [_mask_of(a, f.path, segment) for f, a in zip(files, aligned)]
    truth = majority_vote(masks[1:])
    spacing, units = tuple(grid.spacing_mm), "mm"
    unknown = _spacing_unknown(files, spacing)
    if unknown is None and spacing_mm is not None and not np.allclose(spacing, spacing_mm, rtol=1e-3):
        raise CacError(f"--spacing {spacing_mm[0]:g},{spacing_mm[1]:g} mm differs from the files' known spacing "
                       f"{spacing[0]:g},{spacing[1]:g} mm; leave --spacing out")
    if unknown is not None:
        if spacing_mm is not None:
            spacing = tuple(float(v) for v in spacing_mm)
        elif allow_pixel_units:
            spacing, units = (1.0, 1.0), "px"
        else:
            raise CacError(f"{unknown}: the HD cannot be given in mm; pass --spacing MM (the cine's pixel "
                           "spacing) or --allow-pixel-units (HD and areas in pixels)")
    if onset is not None:
        # Frame 0 cannot be the onset (no frame before it would be scored), nor can one past the last frame.
        last = truth.shape[0] - 1
        if not 1 <= onset <= last:
            valid = f"1..{last}" if last >= 1 else "none: the files have a single frame"
            raise CacError(f"--onset {onset} is not a possible first contrast frame of these files ({valid}); "
                           "give the first contrast frame, 0-based, or leave it out")
        masks, truth = [m[:onset] for m in masks], truth[:onset]
    result = evaluate_masks(masks[0], truth, spacing)
    if onset is not None:
        result["onset_frame"] = int(onset)
    for row in result["frames"]:
        row["annotators_with_calcium"] = int(sum(bool(m[row["index"]].any()) for m in masks[1:]))
    if units == "px":
        for row in result["frames"]:
            row["hd_px"] = row.pop("hd_mm")
            row["roi_area_px"] = row.pop("roi_area_mm2")
        result["summary"]["hd_px"] = result["summary"].pop("hd_mm")
    result["units"] = units
    result["grid"] = {"shape": list(grid.shape), "spacing_mm": None if units == "px" else list(spacing),
                      "offsets": {str(p): list(o) for p, o in zip((pred_path, *truth_paths), grid.offsets)}}
    return result


COLUMNS = ("index", "iom", "hd_mm", "roi_area_mm2", "roi_area_pct", "roi_precision", "ai_calcium",
           "truth_calcium", "annotators_with_calcium", "agree")


def _columns(result: dict) -> tuple[str, ...]:
    if result.get("units") == "px":
        return tuple({"hd_mm": "hd_px", "roi_area_mm2": "roi_area_px"}.get(c, c) for c in COLUMNS)
    return COLUMNS


def table_csv(result: dict) -> str:
    """The per-frame table as CSV text (empty cells where undefined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _columns(result)
    writer.writerow(columns)
    for row in result["frames"]:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue()


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _parse_spacing(text: str | None) -> tuple[float, float] | None:
    """``--spacing MM`` or ``ROW,COL`` as (row, col) mm; CacError quoting the text as typed.

    >>> _parse_spacing("0.3"), _parse_spacing("0.3,0.4"), _parse_spacing(None)
    ((0.3, 0.3), (0.3, 0.4), None)
    """
    from CACIdentifierLib.cine import SPACING_RANGE_MM
    from CACIdentifierLib.dicom_io import normalize_spacing
    from CACIdentifierLib.errors import printable

    if text is None:
        return None
    try:
        return normalize_spacing(text.replace(",", " ").split())
    except CacError:
        # normalize_spacing quotes its argument, here a Python list: the option as typed reads better.
        lo, hi = SPACING_RANGE_MM
        raise CacError(f"--spacing {printable(text, 60)} is not valid; give one number of mm between {lo:g} and "
                       f"{hi:g} (or ROW,COL), e.g. --spacing 0.3") from None


def run(args) -> int:
    if args.csv == "-" and args.json:
        raise CacError("--csv - and --json both write to standard output; give --csv a file name")
    if args.csv and args.csv != "-":
        from CACIdentifierLib.fileutil import check_not_input, check_writable

        check_not_input(args.csv, args.pred, *args.truth, option="--csv")
        check_writable(args.csv, args.overwrite)
    spacing = _parse_spacing(args.spacing)
    result = evaluate_files(args.pred, args.truth, args.segment, ignore_source=args.ignore_source,
                            spacing_mm=spacing, allow_pixel_units=args.allow_pixel_units, onset=args.onset)
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
    px = result.get("units") == "px"
    hd_key, area_key = ("hd_px", "roi_area_px") if px else ("hd_mm", "roi_area_mm2")
    if px:
        print("units: pixels (the pixel spacing is unknown)")
    print(f"{'frame':>6} {'IoM':>6} {'HD (px)' if px else 'HD (mm)':>9} {'ROI px' if px else 'ROI mm2':>9} "
          f"{'ROI %':>6} {'prec.':>6} {'AI':>4} {'truth':>5} {'agree':>5}")
    yes = {True: "yes", False: "no"}
    for f in result["frames"]:
        print(f"{f['index']:>6} {_fmt(f['iom'], 3):>6} {_fmt(f[hd_key], 2):>9} {_fmt(f[area_key], 1):>9} "
              f"{_fmt(f['roi_area_pct'], 1):>6} {_fmt(f['roi_precision'], 3):>6} {yes[f['ai_calcium']]:>4} "
              f"{yes[f['truth_calcium']]:>5} {yes[f['agree']]:>5}")
    if not result["frames"]:
        print("(both segmentations are empty on every frame)")
    for key, label, digits in (("iom", "IoM", 2), (hd_key, "HD (px)" if px else "HD (mm)", 2),
                               ("roi_precision", "ROI precision", 2)):
        s = result["summary"][key]
        if s["median"] is None:  # "- (---)" read as a broken table: say it is undefined
            why = "no frame with an AI ROI" if key == "roi_precision" else "no frame where both mark calcium"
            print(f"{label}: - ({why})")
            continue
        print(f"{label}: {_fmt(s['median'], digits)} ({_fmt(s['q1'], digits)}-{_fmt(s['q3'], digits)}) median (Q1-Q3)")
    pr = result["summary"]["presence"]
    print(f"calcium presence: AI and annotators agree on {pr['both'] + pr['neither']} of {pr['frames']} frames "
          f"(both {pr['both']}, AI only {pr['ai_only']}, annotators only {pr['truth_only']}, neither {pr['neither']})")
    return 0
