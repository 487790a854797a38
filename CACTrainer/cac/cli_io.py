"""``cac info`` and ``cac convert``: what a cine holds, and the cine as NRRD for 3D Slicer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from CACIdentifierLib.errors import CacError, printable


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spacing",
        type=float,
        metavar="MM",
        help="pixel spacing in mm at the isocentre, used when the file has none (image folders)",
    )
    parser.add_argument(
        "--frame-time",
        type=float,
        dest="frame_time_ms",
        metavar="MS",
        help="time between frames in ms, used when the file has none",
    )


def register(subparsers) -> None:
    info = subparsers.add_parser(
        "info",
        help="show what a cine holds (frames, timing, spacing, ECG, blank frames)",
        description=(
            "Read a cine (DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd) and print "
            "its size, frame time, pixel spacing and where it came from, R waves (0-based frames), ECG, "
            "blank frames and the maker.  Patient and study identifiers (PatientID, study date, UIDs) are "
            "shown only with --identifiers."
        ),
    )
    info.add_argument("cine", help="DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd")
    info.add_argument("--json", action="store_true", help="print JSON on stdout")
    info.add_argument(
        "--identifiers",
        action="store_true",
        help="also print the patient and study identifiers (PatientID, StudyDate, study/series/instance UIDs)",
    )
    _add_overrides(info)
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="write a cine as a .seq.nrrd sequence or a .nrrd frame stack for 3D Slicer",
        description=(
            "Write the cine as OUT.seq.nrrd (a volume sequence Slicer opens with a browser, index = time in ms) "
            "or OUT.nrrd (a 3D frame stack, slice k = frame k, the volume to annotate on)."
        ),
    )
    convert.add_argument("cine", help="DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd")
    convert.add_argument("out", help="output file: NAME.seq.nrrd (sequence) or NAME.nrrd (frame stack)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.add_argument("--record-source", action="store_true",
                         help="also write the input's path into the header (CAC_source; off by default: the file "
                              "goes to annotators, and a path can name the patient)")
    _add_overrides(convert)
    convert.set_defaults(func=run_convert)


def _spacing_json(spacing_mm):
    """``null`` when unknown, a number when isotropic, else ``[row, col]`` (mm)."""
    if spacing_mm is None:
        return None
    row, col = (float(v) for v in spacing_mm)
    return row if row == col else [row, col]


# Tags that identify a patient or an examination: printed only when asked (--identifiers), because
# `cac info` output ends up in terminals, logs and bug reports.
PATIENT_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate")


def cine_info(cine, identifiers: bool = False) -> dict:
    """The ``cac info --json`` dictionary for a :class:`~CACIdentifierLib.cine.Cine`.

    Parameters
    ----------
    cine : Cine
        The cine read by :func:`~CACIdentifierLib.cine_io.load_cine`.
    identifiers : bool
        Include the patient and study identifiers (:data:`PATIENT_IDENTIFIERS`); otherwise only their
        names are listed under ``identifiers_hidden``.
    """
    from CACIdentifierLib.dicom_io import transfer_syntax_name

    ecg = None
    if cine.ecg is not None:
        times = cine.ecg.times_ms
        ecg = {
            "source": cine.ecg.source,
            "samples": int(len(cine.ecg.samples)),
            "start_ms": float(times[0]) if len(times) else None,
            "end_ms": float(times[-1]) if len(times) else None,
        }
    frame_time = None if cine.frame_time_ms is None else float(cine.frame_time_ms)
    return {
        "path": str(cine.source),
        "frames": cine.n_frames,
        "rows": cine.rows,
        "columns": cine.columns,
        "dtype": str(cine.frames.dtype),
        "bits_stored": int(cine.bits_stored),
        "transfer_syntax": transfer_syntax_name(cine.transfer_syntax),
        "transfer_syntax_uid": cine.transfer_syntax,
        "frame_time_ms": frame_time,
        "frame_rate_fps": None if not frame_time else 1000.0 / frame_time,
        "duration_ms": None if frame_time is None else frame_time * cine.n_frames,
        "spacing_mm": _spacing_json(cine.spacing_mm),
        "spacing_source": cine.spacing_source if cine.spacing_mm is not None else "unknown",
        "r_wave_frames": None if cine.r_wave_frames is None else [int(k) for k in cine.r_wave_frames],
        "ecg_present": bool(cine.ecg_present),
        "ecg": ecg,
        "modality": cine.modality,
        "blank_frames": [int(k) for k in cine.blank_frames],
        "identifiers": {
            key: value
            for key, value in cine.identifiers.items()
            if identifiers or key not in PATIENT_IDENTIFIERS
        },
        "identifiers_hidden": []
        if identifiers
        else [key for key in cine.identifiers if key in PATIENT_IDENTIFIERS],
    }


def _text(info: dict) -> str:
    """The human-readable ``cac info``; every string from the file goes through :func:`printable`."""

    def fmt(value, unit=""):
        if value is None:
            return "unknown"
        if isinstance(value, float):
            return f"{value:.6g}{unit}"
        if isinstance(value, list):
            return " x ".join(f"{v:.6g}" for v in value) + unit
        return f"{printable(value)}{unit}"

    syntax = info["transfer_syntax"]
    lines = [
        f"cine:               {printable(info['path'], None)}",
        f"frames:             {info['frames']} of {info['rows']} x {info['columns']} px, "
        f"{info['bits_stored']}-bit ({info['dtype']})",
        f"modality:           {printable(info['modality'] or 'unknown')}",
        f"transfer syntax:    {printable(syntax) if syntax else 'none (not DICOM)'}"
        + (f" [{printable(info['transfer_syntax_uid'])}]" if info["transfer_syntax_uid"] else ""),
        f"frame time:         {fmt(info['frame_time_ms'], ' ms')}"
        + (
            f" ({info['frame_rate_fps']:.4g} fps, {info['duration_ms'] / 1000:.3g} s)"
            if info["frame_time_ms"]
            else ""
        ),
        f"pixel spacing:      {fmt(info['spacing_mm'], ' mm')} (source: {printable(info['spacing_source'])})",
        "R waves:            "
        + (
            "none recorded"
            if not info["r_wave_frames"]
            else "frames " + ", ".join(map(str, info["r_wave_frames"]))
        )
        + " (0-based)",
        "ECG:                "
        + (
            f"{info['ecg']['samples']} samples ({info['ecg']['source']})"
            if info["ecg"]
            else ("R waves only" if info["ecg_present"] else "none")
        ),
        "blank frames:       "
        + (", ".join(map(str, info["blank_frames"])) if info["blank_frames"] else "none"),
    ]
    for key, value in info["identifiers"].items():
        lines.append(f"{key + ':':<19} {printable(value)}")
    if info["identifiers_hidden"]:
        lines.append(
            f"{'identifiers:':<19} {', '.join(info['identifiers_hidden'])} not shown (pass --identifiers)"
        )
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from CACIdentifierLib.cine_io import load_cine

    cine = load_cine(args.cine, spacing_mm=args.spacing, frame_time_ms=args.frame_time_ms)
    info = cine_info(cine, identifiers=args.identifiers)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_text(info))
    return 0


def output_kind(path) -> str:
    """``"sequence"`` for ``*.seq.nrrd``, ``"frame-stack"`` for other ``*.nrrd``; CacError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(".seq.nrrd"):
        return "sequence"
    if name.endswith(".nrrd"):
        return "frame-stack"
    raise CacError(
        f"cannot write {path}: name the output NAME.seq.nrrd (sequence) or NAME.nrrd (frame stack)"
    )


def run_convert(args: argparse.Namespace) -> int:
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.fileutil import check_not_input, check_writable

    kind = output_kind(args.out)
    # Fail before the (slow) read when the output cannot be written.
    check_not_input(args.out, args.cine, option="output")
    out = check_writable(args.out, args.overwrite)
    cine = load_cine(args.cine, spacing_mm=args.spacing, frame_time_ms=args.frame_time_ms)
    from CACIdentifierLib import nrrd_io

    if kind == "sequence":
        nrrd_io.write_seq_nrrd(cine, out, overwrite=args.overwrite, record_source=args.record_source)
    else:
        nrrd_io.write_frame_stack_nrrd(cine, out, overwrite=args.overwrite, record_source=args.record_source)
    print(f"wrote {printable(str(out), None)} ({kind}, {cine.n_frames} frames of {cine.rows} x {cine.columns})")
    return 0
