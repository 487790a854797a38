"""``cac identify``: CAC ROIs in a cine, written as a segmentation, a report and a picture."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from CACIdentifierLib.errors import CacError, printable

DEFAULT_MODEL = "default"
# The files written into the --out folder.
OUTPUT_NAMES = ("roi.seg.nrrd", "report.json", "overlay.png")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "identify",
        help="find CAC regions of interest on the non-contrast frames of a cine",
        description=(
            "Synchronize the cine, run the double-head ResUNet-18 on the non-contrast frames paired with "
            "contrast frames, refine the ROIs and write DIR/roi.seg.nrrd, DIR/report.json and DIR/overlay.png."
        ),
    )
    p.add_argument("cine", help="DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model .safetensors file (default: the shipped model)")
    p.add_argument(
        "--annotations", nargs="+", metavar="SEG", help="annotators' .seg.nrrd files (majority vote = truth)"
    )
    p.add_argument("--ignore-source", action="store_true",
                   help="accept annotations that record another source cine (warns instead of refusing)")
    p.add_argument("--out", default="cac-output", help="output folder (default: ./cac-output)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the network runs (default auto: a GPU when torch sees one, else the CPU)")
    p.add_argument("--onset", type=int, help="contrast onset frame (0-based), overrides detection")
    p.add_argument("--onset-guard", type=int, metavar="N",
                   help="non-contrast frames just before a detected onset that are not analysed "
                        "(default: 2, see docs/sync.md; none with --onset)")
    p.add_argument("--sigma", type=float, help="refinement Gaussian sigma in pixels")
    p.add_argument("--min-island", type=int, dest="min_island_px", help="smallest ROI island kept, in pixels")
    p.add_argument("--threshold", type=float, help="ROI threshold after the Gaussian")
    p.add_argument("--roi-patches", type=int, choices=range(1, 6), metavar="K",
                   help="at most the K most probable of a frame's positive patches (of 5) draw its ROI "
                        "(default: the model card's, else 5)")
    p.add_argument("--spacing", type=float, help="pixel spacing in mm, for image folders without one")
    p.add_argument("--frame-time", type=float, dest="frame_time_ms", help="frame time in ms, if the file has none")
    p.add_argument("--batch-frames", type=int, default=None, help="frames per forward pass (default: 1 on CPU, 8 on GPU)")
    p.add_argument("--no-autocast", action="store_true", help="run the network in fp32: the same frames on every machine (slower where the CPU has bf16)")
    p.add_argument("--temporal", action="store_true",
                   help="keep only ROIs that recur at the same cardiac phase in another beat")
    p.add_argument("--keep-static", action="store_true",
                   help="keep ROIs on dark spots that stay on the same pixels through the run (detector defects, "
                        "markers) of a run in which a heartbeat is found; by default they are removed: coronary calcium moves with "
                        "the heart")
    p.add_argument("--no-cine-gate", action="store_true",
                   help="show each frame's own ROIs even where the model card's cine threshold (cac calibrate "
                        "--cine-gate) judges the whole cine calcium-free")
    p.add_argument("--dicom-seg", metavar="OUT.dcm",
                   help="also write the ROIs as a DICOM Segmentation referencing the source XA file and its frames "
                        "(a file name; it may lie in the --out folder, e.g. DIR/roi.seg.dcm)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder (and --dicom-seg file)")
    p.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (not with --progress-json, whose stdout carries only "
                        "its events: the report is then read from DIR/report.json)")
    p.add_argument("--record-source", action="store_true",
                   help="also write the cine's file path into report.json (off by default: a path can name the "
                        "patient; the cine is named by its pixel fingerprint)")
    p.add_argument(
        "--progress-json", action="store_true",
        help='print progress as JSON lines on stdout ({"event": "progress", "done", "total", "message"}), '
        'then {"event": "done", "out": DIR} or {"event": "error", "message": ...}; for a parent process '
        "(not with --json)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "progress_json", False):
        return _run(args)
    from CACIdentifierLib.progress import json_event

    try:
        code = _run(args)
    except CacError as exc:
        json_event("error", message=str(exc))
        raise
    except MemoryError:
        # cli.main() prints the line for the terminal; the parent process reads this event.
        json_event("error", message="not enough memory to identify in this cine with these settings")
        raise
    json_event("done", out=str(Path(args.out).resolve()))
    return code


def _run(args: argparse.Namespace) -> int:
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.dicom_io import normalize_spacing
    from CACIdentifierLib.fileutil import (
        atomic_directory,
        atomic_output,
        check_not_input,
        check_output_directory,
    )
    from CACIdentifierLib.inference import check_batching
    from CACIdentifierLib.modelio import load_model
    from CACIdentifierLib.progress import json_event, json_progress, terminal_progress
    from CACIdentifierLib.refinement import DEFAULTS, check_settings
    from CACIdentifierLib.report import (
        build_report,
        evaluate_against_annotations,
        save_overlay_png,
        summary_line,
        write_json,
    )
    from CACIdentifierLib.resources import default_model_path

    # Options first, before any file is looked at.  --spacing 0 is refused here, not taken for "not given".
    if args.json and getattr(args, "progress_json", False):
        # Both print on stdout: the report would be mixed into the event stream a parent parses line by line.
        raise CacError("--json and --progress-json both print on stdout; give one (with --progress-json the "
                       "report is in DIR/report.json)")
    check_batching(args.batch_frames)  # before the cine is read
    spacing = normalize_spacing(args.spacing)
    # The given refinement settings (the others come from the model card, checked when it is read).
    check_settings(**{key: value if value is not None else DEFAULTS[key] for key, value in
                      (("sigma", args.sigma), ("min_island_px", args.min_island_px), ("threshold", args.threshold))})
    out = Path(args.out)
    # A frames folder given as its own output would gain overlay.png as a frame.
    check_not_input(out, args.cine, inside_ok=True)  # a subfolder of it replaces no frame
    # Before the (slow) work: an output folder that cannot be written fails now, not after it.
    check_output_directory(out, args.overwrite, names=OUTPUT_NAMES)
    dicom_seg = getattr(args, "dicom_seg", None)
    seg_in_out = False
    if dicom_seg:
        check_not_input(dicom_seg, args.cine, option="--dicom-seg")
        seg_in_out = _check_dicom_seg_location(Path(dicom_seg), out)
        _check_dicom_seg_source(args.cine, Path(dicom_seg), args.overwrite, new_folder=seg_in_out and not out.exists())
    # A missing GPU fails now, not after synchronization and its warnings.
    from CACIdentifierLib.device import choose_device

    choose_device(args.device)
    progress_json = getattr(args, "progress_json", False)
    if progress_json:
        json_event("progress", done=0, total=1, message="reading the cine")
    cine = load_cine(args.cine, spacing_mm=spacing, frame_time_ms=args.frame_time_ms)
    # Before the model: a wrong annotation file is refused at once.
    annotations = None
    if args.annotations:
        from CACIdentifierLib.nrrd_io import read_seg_nrrd
        from CACIdentifierLib.seg_align import check_same_source, frame_stack_matrix

        annotations, sources = [], [("the cine", cine.fingerprint())]
        for path in args.annotations:
            # One drawn over a cropped copy of the cine's frame-stack volume is refused with `cac dataset add`'s line.
            seg = read_seg_nrrd(path, expected_shape=cine.frames.shape,
                                expected_ijk_to_ras=frame_stack_matrix(cine.spacing_mm))
            if not seg.segments:
                raise CacError(f"{path} has no segment; give an annotation with the calcium drawn")
            annotations.append(seg.union())
            sources.append((path, seg.source_fingerprint))
        check_same_source(sources, ignore=args.ignore_source, advice="use the annotations made on this cine",
                          first_is_cine=True)

    if progress_json:
        json_event("progress", done=0, total=1, message="loading the model")
    model_path = default_model_path() if args.model == DEFAULT_MODEL else Path(args.model)
    model, metadata = load_model(model_path)

    from CACIdentifierLib.inference import identify

    result = identify(
        cine,
        model,
        metadata,
        device=args.device,
        batch_frames=(args.batch_frames if args.batch_frames is not None
                      else 1 if args.device == "cpu" or not _gpu() else 8),
        onset=args.onset,
        onset_guard=args.onset_guard,
        min_island_px=args.min_island_px,
        sigma=args.sigma,
        threshold=args.threshold,
        roi_patches=args.roi_patches,
        use_autocast=not args.no_autocast,
        temporal=args.temporal,
        static_filter=not args.keep_static,
        cine_gate=not args.no_cine_gate,
        progress=json_progress() if progress_json else terminal_progress(),
    )
    evaluation = None
    truth = None
    if annotations is not None:
        evaluation = evaluate_against_annotations(result, annotations, cine.spacing_mm)
        truth = evaluation["truth"]
    model_info = {"path": str(model_path), "name": metadata.get("name", model_path.stem)}
    report = build_report(result, cine, evaluation, model_info, record_source=args.record_source)
    for warning in report.get("distribution_warnings", []):
        print(f"cac: warning: {warning}", file=sys.stderr)
    removed = result.parameters.get("static_rois_removed", 0)
    if removed:
        print(f"cac: {removed} ROI(s) on {len(result.parameters['static_frames'])} frame(s) removed: dark spots that stay "
              "on the same pixels through the run, not calcium moving with the heart; --keep-static keeps them",
              file=sys.stderr)
    if result.parameters.get("cine_gate_withheld"):
        print(f"cac: no ROI drawn: the cine's evidence {result.parameters['cine_evidence']:.3f} (mean frame "
              f"probability) is below the model's cine threshold {result.parameters['cine_threshold']:.3f}; "
              "--no-cine-gate shows each frame's own ROIs", file=sys.stderr)

    from CACIdentifierLib.nrrd_io import write_seg_nrrd

    seg = None
    if dicom_seg:
        from CACIdentifierLib.dicom_seg import build_dicom_seg

        # Made in memory before any output is written: a SEG that cannot be made leaves nothing behind.
        seg = build_dicom_seg(args.cine, result.roi, cine.spacing_mm)
    with contextlib.ExitStack() as stack:
        # Every output is written to a temporary name first; the folder is moved in place, then the SEG
        # file, and a failure before that deletes all of them (a retry is not refused for an existing folder).
        # A SEG inside the output folder is staged with the folder's files and moved in place with them.
        seg_tmp = (stack.enter_context(atomic_output(dicom_seg, args.overwrite))
                   if seg is not None and not seg_in_out else None)
        with atomic_directory(out, overwrite=args.overwrite) as tmp:
            write_seg_nrrd(tmp / "roi.seg.nrrd", {"CAC ROI": result.roi}, cine.spacing_mm,
                           colors={"CAC ROI": (1.0, 0.18, 0.69)}, source_fingerprint=cine.fingerprint())
            write_json(tmp / "report.json", report)
            save_overlay_png(tmp / "overlay.png", cine, result, truth)
            if seg is not None:
                seg.save_as(tmp / Path(dicom_seg).name if seg_in_out else seg_tmp)

    if progress_json:
        pass  # stdout carries only JSON lines; run() prints the "done" event
    elif args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        n_roi = int(sum(result.roi[f].any() for f in result.frames))
        print(f"{len(result.frames)} non-contrast frames analysed (onset at frame {report['onset_frame']}); "
              f"ROI found on {n_roi} frames")
        if evaluation is not None:
            print(f"against annotators: {summary_line(evaluation['summary'])}")
        print(f"outputs: {out / 'roi.seg.nrrd'}, {out / 'report.json'}, {out / 'overlay.png'}"
              + (f", {dicom_seg}" if dicom_seg else ""))
    return 0


def _check_dicom_seg_location(seg: Path, out: Path) -> bool:
    """Refuse a --dicom-seg path that is a folder, the --out folder or one of its outputs, before any work.

    Returns whether the SEG lies directly in the --out folder: it is then written with the folder's files
    (the folder need not exist yet, and no --overwrite is needed for the folder this command creates).
    """
    where, folder = seg.resolve(), out.resolve()
    if where == folder:
        raise CacError(f"--dicom-seg {printable(str(seg), 200)} is the --out folder; give a file name, "
                       f"e.g. {printable(str(out / 'roi.seg.dcm'), 200)}")
    if seg.is_dir():
        raise CacError(f"--dicom-seg {printable(str(seg), 200)} is a folder; give a file name, "
                       f"e.g. {printable(str(seg / 'roi.seg.dcm'), 200)}")
    if where.parent == folder and where.name in OUTPUT_NAMES:
        raise CacError(f"--dicom-seg {printable(str(seg), 200)} is the {where.name} that identify writes in "
                       "--out; choose another name")
    if where.parent != folder and where.is_relative_to(folder) and not where.parent.exists():
        # Only the --out folder itself is created by the command, not folders inside it.
        raise CacError(f"--dicom-seg {printable(str(seg), 200)} lies in a subfolder of --out that does not exist; "
                       "write it directly in the --out folder or elsewhere")
    return where.parent == folder


def _check_dicom_seg_source(cine, seg: Path, overwrite: bool, new_folder: bool) -> None:
    """Before the long work: the cine can be referenced by a SEG, and (unless the SEG goes into the --out
    folder this command creates, already checked) the SEG's location can be written."""
    from CACIdentifierLib.dicom_seg import check_source

    # The output check would refuse the folder that does not exist yet (check_output_directory checked it).
    check_source(cine, seg, overwrite, check_output=not new_folder)


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()
