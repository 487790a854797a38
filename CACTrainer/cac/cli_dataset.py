"""``cac dataset add|check|info``: build a training dataset from your own runs and annotations.

See :mod:`CACTrainerLib.dataset_builder` for the layout and the privacy rules
(patients pseudonymised with a keyed hash; nothing else of the DICOM header kept).
"""

from __future__ import annotations

import json
import sys

from CACIdentifierLib.errors import CacError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="build a training dataset from your DICOM runs and annotators' segmentations",
        description=(
            "add: one acquisition (cine + each annotator's .seg.nrrd) to DATASET, checked, majority-voted, "
            "with annotator agreement and contrast onset; check: list problems; info: counts. "
            "`cac train DATASET` reads the result. Patients are pseudonymised (docs/dataset.md)."
        ),
    )
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION")
    a = sub.add_parser("add", help="add one acquisition with its annotations")
    a.add_argument("dataset", metavar="DATASET", help="dataset folder (created when missing)")
    a.add_argument("cine", metavar="CINE",
                   help="DICOM XA file or folder, .nrrd / .seq.nrrd, or a folder of frame images")
    a.add_argument("--annotations", nargs="+", required=True, metavar="SEG",
                   help="each annotator's .seg.nrrd drawn over the cine's frame-stack volume (three in the paper)")
    a.add_argument("--patient", metavar="ID",
                   help="patient id when the cine has no DICOM PatientID (pseudonymised like it)")
    a.add_argument("--onset", type=int, metavar="N",
                   help="first contrast frame, 0-based (default: detected, and then the frames just before it, "
                        "which `cac identify` leaves out, are not training frames either)")
    a.add_argument("--segment", metavar="NAME", help="use only this segment of each file (default: union)")
    a.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="pixel spacing for frame folders")
    a.add_argument("--frame-time", type=float, metavar="MS", help="frame time for frame folders")
    a.add_argument("--key", metavar="FILE", help="pseudonym key file (default DATASET/pseudonym.key)")
    a.add_argument("--overwrite", action="store_true", help="replace the acquisition of the same series")
    a.add_argument("--ignore-source", action="store_true",
                   help="accept annotations that record another source cine (warns instead of refusing)")
    a.add_argument("--json", action="store_true", help="print what was added as JSON")
    c = sub.add_parser("check", help="list problems (exit code 1 if any) and warnings of a dataset")
    c.add_argument("dataset", metavar="DATASET")
    c.add_argument("--json", action="store_true")
    i = sub.add_parser("info", help="counts: patients, acquisitions, annotated frames, calcium, agreement")
    i.add_argument("dataset", metavar="DATASET")
    i.add_argument("--json", action="store_true")
    p.set_defaults(func=run, parser=p)


def _spacing(values):
    if values is None:
        return None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    raise CacError("--spacing takes one value (square pixels) or two (row column), in mm")


def _training_counts(annotated: int, calcium: int, contrast_annotated: int | None, where: str) -> str:
    """The frame counts ``add`` and ``info`` print: ``annotated`` and ``calcium`` are of the frames training
    uses, ``where`` says which; ``contrast_annotated``, the marked frames at or after the onset, is named when
    there are any: "3 annotated and 2 with calcium (majority) before the onset (frames training uses), 4
    annotated at or after it (not used for training)".
    """
    line = f"{annotated} annotated and {calcium} with calcium (majority) {where}"
    if contrast_annotated:
        line += f", {contrast_annotated} annotated at or after it (not used for training)"
    return line


def run(args) -> int:
    from CACTrainerLib import dataset_builder

    if args.dataset_command == "add":
        added = dataset_builder.add_acquisition(args.dataset, args.cine, args.annotations, patient=args.patient,
                                                onset=args.onset, segment=args.segment, spacing_mm=_spacing(args.spacing),
                                                frame_time_ms=args.frame_time, key_file=args.key, overwrite=args.overwrite,
                                                ignore_source=args.ignore_source)
        if args.json:
            json.dump(vars(added), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            dice = "-" if added.dice_median is None else f"{added.dice_median:.2f}"
            onset = "-" if added.onset_frame is None else added.onset_frame
            source = added.onset_source
            if added.onset_guard_frames:
                source = (f"detected at frame {added.detected_onset_frame}, less a {added.onset_guard_frames}-frame "
                          "guard band")
            where = ("before the onset (frames training uses)" if added.onset_frame is not None else
                     "(no onset: training uses all frames)")
            counts = _training_counts(added.annotated_frames, added.calcium_frames,
                                      added.contrast_annotated_frames, where)
            print(f"{'replaced' if added.replaced else 'added'} {added.id} ({added.folder}): {added.n_frames} frames, "
                  f"{counts}, onset {onset} ({source}), annotator Dice median {dice}"
                  f"{' (frames before the onset)' if added.onset_frame is not None else ''}")
        return 0
    if args.dataset_command == "check":
        problems, warnings = dataset_builder.check(args.dataset)
        if args.json:
            json.dump({"problems": problems, "warnings": warnings}, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            for line in problems:
                print(f"problem: {line}")
            for line in warnings:
                print(f"warning: {line}")
            print(f"{len(problems)} problem(s), {len(warnings)} warning(s)")
        return 1 if problems else 0
    if args.dataset_command == "info":
        counts = dataset_builder.info(args.dataset)
        if args.json:
            json.dump(counts, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            dice = counts["dice_median_of_acquisitions"]
            print(f"patients: {counts['patients']}")
            print(f"acquisitions: {counts['acquisitions']}")
            frames = _training_counts(counts["annotated_frames"], counts["calcium_frames"],
                                      counts.get("contrast_annotated_frames"),
                                      "before each onset (frames training uses)")
            print(f"frames: {counts['frames']} ({frames})")
            print(f"annotators per acquisition: {', '.join(map(str, counts['annotators'])) or '-'}")
            print(f"annotator agreement (pairwise Dice, median of acquisitions): "
                  f"{'-' if dice is None else f'{dice:.2f}'}")
        return 0
    args.parser.print_help(sys.stderr)
    return 2
