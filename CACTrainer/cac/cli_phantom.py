"""``cac phantom``: write a synthetic angiography dataset with calcium ground truth."""

from __future__ import annotations

import json
import shlex
import sys

# Largest --patients and --acquisitions-per-patient: the widths of the folder numbers (P001, A01).
MAX_PATIENTS = 999
MAX_ACQUISITIONS = 99


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="write a synthetic angiography dataset with calcium ground truth",
        description=(
            "Generate phantom patients (a 3D coronary tree with calcium) seen in several acquisitions from "
            "different C-arm angles: per acquisition a DICOM XA cine, three annotators' .seg.nrrd, their "
            "majority, the exact truth (.seg.nrrd and truth.json), and one manifest.json for the dataset. "
            "See docs/phantom.md for the model and the defaults."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to create")
    p.add_argument("--patients", type=int, default=1, metavar="P",
                   help=f"number of patients, 1-{MAX_PATIENTS} (default 1)")
    p.add_argument("--acquisitions-per-patient", type=int, default=1, metavar="A",
                   help=f"acquisitions (projections) per patient, 1-{MAX_ACQUISITIONS} (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, 0-4294967295 (default 0)")
    p.add_argument("--frames", type=int, default=200, metavar="N", help="frames per cine, 8-5000 (default 200)")
    p.add_argument("--fps", type=float, default=15.0, metavar="F", help="frame rate (default 15; 7.5 and 30 usual)")
    p.add_argument("--size", type=int, default=512, metavar="PX",
                   help="rows = columns, 32-4096 (default 512; smaller keeps the field of view)")
    p.add_argument("--bits", type=int, choices=(8, 10, 12), default=None, help="BitsStored (default 8)")
    p.add_argument("--compression", choices=("none", "rle"), default="none",
                   help="DICOM transfer syntax: explicit little endian or RLE Lossless (default none)")
    p.add_argument("--calcium-free-fraction", type=float, default=None, metavar="F",
                   help="fraction of patients without calcium, whose acquisitions are negatives (default 0.25)")
    p.add_argument("--calcium-count", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="deposits per calcified patient (default 1 4)")
    p.add_argument("--calcium-contrast", type=float, default=None, metavar="MU",
                   help="extra attenuation of calcium per mm (default 0.12 /mm, about 12%% for a 1 mm thick deposit)")
    p.add_argument("--contrast", type=float, default=None, metavar="MU",
                   help="attenuation of fully opacified blood per mm (default 0.17 /mm)")
    p.add_argument("--heart-rate", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="heart rate range in bpm (default 50 120)")
    p.add_argument("--onset-range", type=float, nargs=2, default=None, metavar=("A", "B"),
                   help="contrast onset as a fraction of the run (default 0.35 0.65)")
    p.add_argument("--early-onset-prob", type=float, default=None, metavar="P",
                   help="probability of an early onset at 0.1-0.35 of the run (default 0.15)")
    p.add_argument("--respiration-mm", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="respiratory drift amplitude in mm (default 2 5)")
    p.add_argument("--table-pan-prob", type=float, default=None, metavar="P",
                   help="probability of a table pan during the run (default 0.2)")
    p.add_argument("--photons", type=float, default=None, metavar="N",
                   help="quanta per pixel in the lung field: sets the quantum noise (default 1200)")
    p.add_argument("--side", choices=("random", "left", "right"), default="random",
                   help="injected coronary system: left, right, or random (70%% left; default)")
    p.add_argument("--annotator-min-snr", type=float, default=None, metavar="D",
                   help="annotators draw only deposits whose Rose detectability reaches D (x 0.8-1.25 per "
                        "annotator; about 5 = just visible); default: off, or 5-8 with --randomize")
    p.add_argument("--display-processing", type=float, default=None, metavar="P",
                   help="probability per acquisition of XA display processing (harmonization and edge "
                        "enhancement, as systems store runs; docs/phantom.md); default 0, or 0.5 with --randomize")
    p.add_argument("--randomize", action="store_true",
                   help="draw each patient's domain (dose, display, bits, metal, calcium look...) from wide ranges "
                        "(docs/phantom.md); the other options (heart rate, contrast, side ...) still apply")
    p.add_argument("--ecg", action="store_true", help="write the R Wave Pointer (the paper's data have no ECG)")
    p.add_argument("--montage", metavar="PNG",
                   help="also write a montage of the first acquisition (a .png outside OUT_DIR)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the phantom dataset an earlier `cac phantom` wrote in OUT_DIR, completely (its "
                        "patient folders and manifest; files it did not write stay), and the --montage file; "
                        "any other non-empty folder (e.g. a `cac dataset` dataset) is refused")
    p.add_argument("--json", action="store_true", help="print the manifest entries as JSON on stdout")
    p.set_defaults(func=run)


def params_from_args(args):
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib.phantom import PhantomParams

    drawn = [option for option, value in (("--bits", args.bits), ("--photons", args.photons),
                                          ("--calcium-count", args.calcium_count),
                                          ("--calcium-contrast", args.calcium_contrast)) if value is not None]
    if getattr(args, "randomize", False) and drawn:
        raise CacError(f"--randomize draws {', '.join(drawn)} per patient; leave {'it' if len(drawn) == 1 else 'them'} "
                       "out, or leave out --randomize to set them")
    kw = {"n_frames": args.frames, "fps": args.fps, "rows": args.size, "cols": args.size, "ecg": bool(args.ecg)}
    pairs = {"bits": args.bits,
        "calcium_free_fraction": args.calcium_free_fraction, "calcium_mu_per_mm": args.calcium_contrast,
        "contrast_mu_per_mm": args.contrast, "early_onset_prob": args.early_onset_prob,
        "table_pan_prob": args.table_pan_prob, "photons": args.photons,
        "annotator_min_snr": getattr(args, "annotator_min_snr", None),
        "display_processing_prob": getattr(args, "display_processing", None),
    }
    if pairs["display_processing_prob"] is None and getattr(args, "randomize", False):
        pairs["display_processing_prob"] = 0.5  # --randomize spans processed runs too, unless told otherwise
    kw.update({k: v for k, v in pairs.items() if v is not None})
    if args.side != "random":
        kw["left_prob"] = 1.0 if args.side == "left" else 0.0
    ranges = {"heart_rate_bpm_range": args.heart_rate, "onset_fraction_range": args.onset_range,
              "respiration_mm_range": args.respiration_mm, "calcium_count_range": args.calcium_count}
    kw.update({k: tuple(v) for k, v in ranges.items() if v is not None})
    # PhantomParams.validate checks every number (finite, in range, MIN <= MAX) and names the option.
    params = PhantomParams(**kw)
    params.validate()
    return params


def run(args) -> int:
    from pathlib import Path

    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.fileutil import check_writable
    from CACIdentifierLib.progress import terminal_progress
    from CACTrainerLib.phantom_writer import load_manifest, previous_phantom, write_dataset

    params = params_from_args(args)
    # Folders are named P001-P999 and A01-A99: more would break their order (P1000 sorts before P101).
    if not 1 <= args.patients <= MAX_PATIENTS:
        raise CacError(f"--patients must be 1-{MAX_PATIENTS} (patient folders are P001-P{MAX_PATIENTS}), "
                       f"not {args.patients}")
    if not 1 <= args.acquisitions_per_patient <= MAX_ACQUISITIONS:
        raise CacError(f"--acquisitions-per-patient must be 1-{MAX_ACQUISITIONS} (acquisition folders are "
                       f"A01-A{MAX_ACQUISITIONS}), not {args.acquisitions_per_patient}")
    # The generators take the seed modulo 2**32 (and refuse a negative one): other seeds would alias.
    if not 0 <= args.seed < 2**32:
        raise CacError(f"--seed must be 0-{2**32 - 1}, not {args.seed}")
    out = Path(args.out_dir)
    if out.exists() and not args.overwrite:
        previous_phantom(out)  # a folder that --overwrite would refuse (not a phantom) is named as such
        raise CacError(f"{out} already exists; pass --overwrite to replace it or choose another folder")
    if args.montage:
        montage = Path(args.montage)
        if montage.suffix.lower() != ".png":
            raise CacError(f"--montage writes a PNG; give a name ending in .png, not {args.montage}")
        # The dataset folder is replaced as a whole, after which the montage would overwrite its files.
        if montage.resolve().is_relative_to(out.resolve()):
            raise CacError(f"--montage {args.montage} lies inside OUT_DIR {out}, which the dataset replaces; "
                           "write the montage outside it")
        check_writable(args.montage, args.overwrite)
    command = "cac " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    write_dataset(out, params, patients=args.patients, acquisitions_per_patient=args.acquisitions_per_patient,
                  seed=args.seed, compression=args.compression, overwrite=args.overwrite,
                  progress=terminal_progress(), command=command, montage=args.montage,
                  randomize=bool(getattr(args, "randomize", False)))
    entries = load_manifest(out)
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        n_free = sum(1 for e in entries if e["n_calcifications"] == 0)
        print(f"wrote {len(entries)} acquisitions of {args.patients} patients to {out} "
              f"({n_free} without visible calcium); manifest: {out / 'manifest.json'}")
    return 0
