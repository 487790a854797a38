"""``cac sync``: cardiac synchronization of a cine (contrast onset, period, phase, frame pairs)."""

from __future__ import annotations

import json
import sys

from CACIdentifierLib.errors import CacError, printable


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sync",
        help="pair non-contrast frames with contrast frames of the same cardiac phase",
        description=(
            "Detect the contrast onset, estimate the cardiac period and each frame's phase (from the ECG when "
            "the file has one, else from the images), and pair every non-contrast frame with the contrast "
            "frame of the nearest phase.  Frames are 0-based."
        ),
    )
    p.add_argument("cine", help="DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd")
    p.add_argument("--onset", type=int, metavar="N", help="first contrast frame (0-based), overriding detection")
    p.add_argument("--onset-guard", type=int, metavar="N",
                   help="non-contrast frames just before a detected onset that are not analysed "
                        "(default: 2, see docs/sync.md; none with --onset)")
    p.add_argument(
        "--method",
        choices=("default", "paper"),
        default="default",
        help="default: the improved method; paper: eq. 1 + FFT period as in De Rose et al. 2025",
    )
    p.add_argument("--no-ecg", action="store_true", help="ignore the file's ECG; use the image-based estimate")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--plot", metavar="OUT.png", help="write a PNG of the signal with beats and pairs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument(
        "--frame-time",
        type=float,
        dest="frame_time_ms",
        metavar="MS",
        help="time between frames in ms, used when the file has none",
    )
    p.set_defaults(func=run)


def summary(result, n_frames: int) -> str:
    """A readable summary of a :class:`~.sync.SyncResult`."""
    lines = []
    src = "ECG" if result.ecg_used else f"images ({result.method} method)"
    lines.append(f"frames: {n_frames}, phase from {src}")
    lines.append(
        f"contrast onset: frame {result.onset_frame} (fully arrived from frame {result.contrast_start}"
        f"{'' if result.onset_detected else ', not detected: assumed'})"
    )
    if result.guard_frames:
        lines.append(f"guard band: the {result.guard_frames} frame(s) before the detected onset are not paired")
    if result.period_frames is None:
        lines.append("period: none found (no clear periodicity)")
    else:
        hr = "" if result.heart_rate_bpm is None else f", {result.heart_rate_bpm:.1f} bpm"
        lines.append(f"period: {result.period_frames:.2f} frames{hr}")
    lines.append(f"confidence: {result.confidence:.2f} ({'periodic' if result.periodic else 'not periodic'})")
    if result.beat_frames:
        lines.append("beats (phase 0) at frames: " + ", ".join(f"{b:.1f}" for b in result.beat_frames))
    if result.ecg_used and result.image is not None:
        im = result.image
        if im.period_frames is not None:
            lines.append(f"image-based estimate: period {im.period_frames:.2f} frames, confidence {im.confidence:.2f}")
        else:
            lines.append("image-based estimate: no periodicity found")
    shown = result.pairs[:12]
    more = f" ... ({len(result.pairs)} pairs)" if len(result.pairs) > len(shown) else ""
    lines.append("pairs (non-contrast -> contrast): " + ", ".join(f"{a}->{b}" for a, b in shown) + more)
    return "\n".join(lines)  # not the warnings: run prints them on stderr


def warning_messages(caught, result) -> list[str]:
    """The warnings of a synchronization, each once: those raised (``caught``, in order), then any other
    that the result carries.  Raised only: the onset guard ignored with a given onset."""
    messages = []
    for w in [str(c.message) for c in caught] + list(result.warnings):
        if w not in messages:
            messages.append(w)
    return messages


def run(args) -> int:
    import warnings

    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.fileutil import check_not_input, check_writable
    from CACIdentifierLib.sync import plot_sync, synchronize_cine

    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise CacError(f"--plot writes a PNG; give a name ending in .png, not {args.plot}")
        check_not_input(args.plot, args.cine, option="--plot")
        check_writable(args.plot, args.overwrite)
    cine = load_cine(args.cine, frame_time_ms=args.frame_time_ms)
    with warnings.catch_warnings(record=True) as caught:
        # Recorded, to print each once below (the result carries most of them too).
        warnings.simplefilter("always")
        result = synchronize_cine(cine, onset=args.onset, method=args.method, use_ecg=not args.no_ecg,
                                  onset_guard=args.onset_guard)
    # On stderr like every cac warning, in both output modes: stdout has only the result.
    for w in warning_messages(caught, result):
        print(f"cac: warning: {printable(w, 2000)}", file=sys.stderr)  # as cli._show_warning
    if args.plot:
        plot_sync(result, args.plot, overwrite=args.overwrite, title=str(args.cine))
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(summary(result, cine.n_frames))
    return 0
