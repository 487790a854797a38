"""``cac calibrate``: calibrate a model's probabilities and store its activation statistics, on held-out data."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a model on held-out data (Platt or temperature scaling) and store its activation statistics",
        description=(
            "Fit the classifier's calibration on annotated frames the model never trained on -- a dataset folder "
            "(cac phantom / cac dataset) or a pool of new randomised phantom patients -- and store it with the "
            "activation statistics that let cac identify warn about cines unlike the training data. Writes a new "
            "model file (the weights are unchanged), its card and a reliability diagram (OUT with .reliability.png). "
            "--method platt also moves the classifier's 50 % training prior to the data's prevalence, which "
            "changes which frames get an ROI; temperature changes no decision. --sensitivity S also chooses the "
            "operating point (the classifier threshold) on the same frames, with a figure (OUT with "
            ".operating_point.png). See docs/identify.md."
        ),
    )
    p.add_argument("model", help="model file (.safetensors)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="DIR", help="held-out dataset folder with manifest.json")
    src.add_argument("--phantom-pool", type=int, metavar="N", help="N new randomised phantom patients")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="phantom pool seed (patients of seed 2000+S; training pools use 1000+S)")
    p.add_argument("--display-processing", type=float, default=0.0, metavar="P",
                   help="with --phantom-pool: put a share P of its cines through XA display processing "
                        "(harmonization and edge enhancement, as cac phantom --display-processing), so that the "
                        "operating point and the activation statistics also see processed runs; for a model trained "
                        "with display augmentation (default 0: plain cines)")
    p.add_argument("--frames-per-acquisition", type=int, default=6, metavar="K",
                   help="paired non-contrast frames used per acquisition (default 6)")
    p.add_argument("--method", choices=("platt", "temperature", "none"), default="platt",
                   help="platt: temperature and bias (default); temperature: no decision changes; none: "
                        "statistics only (a calibration the model has is kept)")
    p.add_argument("--sensitivity", type=float, metavar="S",
                   help="also choose the operating point: the highest classifier threshold at which a share S "
                        "(0-1] of the held-out frames with calcium still gets an ROI (e.g. 0.9); new patients fall "
                        "short of it about half the time (its standard error over patients is printed)")
    p.add_argument("--island-sizes", metavar="PX[,PX...]",
                   help="with --sensitivity: smaller refinement island sizes (pixels) tried, largest first, when the "
                        "model's own (the paper's 1000) cannot reach S at any threshold; 'none' keeps the model's "
                        "(default: 500,250)")
    p.add_argument("--cine-gate", action="store_true",
                   help="with --sensitivity: also choose a cine threshold; identify then draws no ROI in a cine "
                        "whose frames' mean CAC probability lies below it (each held-out acquisition is a cine)")
    p.add_argument("--roi-patches", type=int, choices=range(1, 6), metavar="K",
                   help="with --sensitivity: at most the K most probable of a frame's gated patches (of 5) draw its "
                        "ROI; the frame decision is unchanged, the ROI smaller and more precise (default: the "
                        "model's, 5 unless its card says otherwise)")
    p.add_argument("--out", required=True, help="output model file (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from CACIdentifierLib.errors import CacError, printable
    from CACIdentifierLib.fileutil import check_not_input, check_writable
    from CACIdentifierLib.modelio import check_model_path, read_metadata
    from CACIdentifierLib.progress import terminal_progress

    out = check_model_path(args.out)
    if out.suffix != ".safetensors":
        raise CacError(f"--out {out} must end in .safetensors")
    check_not_input(out, args.model)
    outputs = [out, out.with_suffix(".json"), out.with_suffix(".reliability.png")]
    if args.sensitivity is not None:
        outputs.append(out.with_suffix(".operating_point.png"))
    for path in outputs:
        check_writable(path, args.overwrite)  # before the work
    if args.sensitivity is not None and not 0.0 < args.sensitivity <= 1.0:
        raise CacError(f"--sensitivity {args.sensitivity} must be a share in (0, 1], e.g. 0.9")
    island_sizes = parse_island_sizes(args.island_sizes)
    # Options that would change nothing are refused rather than ignored.
    if args.seed != 0 and args.phantom_pool is None:
        raise CacError("--seed chooses the phantom patients of --phantom-pool; it has no effect with --dataset")
    if args.display_processing and args.phantom_pool is None:
        raise CacError("--display-processing applies to the cines of --phantom-pool; a --dataset's cines are used "
                       "as they were recorded")
    if not 0.0 <= args.display_processing <= 1.0:
        raise CacError(f"--display-processing {args.display_processing} must be a share in [0, 1], e.g. 0.5")
    if args.island_sizes is not None and args.sensitivity is None:
        raise CacError("--island-sizes is used while choosing the operating point; give --sensitivity S too")
    if args.cine_gate and args.sensitivity is None:
        raise CacError("--cine-gate is chosen with the operating point; give --sensitivity S too")
    if args.roi_patches is not None and args.sensitivity is None:
        raise CacError("--roi-patches is chosen with the operating point; give --sensitivity S too")
    from CACIdentifierLib.background import reads_background

    meta = read_metadata(args.model)  # a bad model fails here, before the data are read
    background = reads_background((meta.get("architecture") or {}).get("inputs"))  # only residual models read it
    progress = terminal_progress()
    if args.phantom_pool is not None:
        if not 1 <= args.phantom_pool <= 10000:
            raise CacError("--phantom-pool must be 1-10000 patients")
        from CACTrainerLib.phantom_pool import phantom_pool

        fs = phantom_pool(args.phantom_pool, seed=2000 + args.seed, frames_per_acquisition=args.frames_per_acquisition,
                          progress=progress, background=background, display_processing_prob=args.display_processing)
        data = f"phantom_pool seed {2000 + args.seed}, {args.phantom_pool} patients x {args.frames_per_acquisition} frames"
        if args.display_processing:
            data += f", display processing {args.display_processing:g}"
    else:
        from CACTrainerLib.dataset import build_frameset

        fs = build_frameset(Path(args.dataset), frames_per_acquisition=args.frames_per_acquisition, progress=progress,
                            background=background)
        data = f"dataset {Path(args.dataset).name}, {len(fs)} frames"
    overlap = training_overlap(meta, fs.patient, None if args.phantom_pool is not None else Path(args.dataset))
    if overlap:
        import warnings

        from CACIdentifierLib.errors import CacWarning

        # Not refused: a user may knowingly calibrate on what they have; the card still records the data.
        warnings.warn(f"{overlap}; a calibration fitted on them is over-confident, calibrate on patients the "
                      "model never trained on", CacWarning, stacklevel=1)
    from CACTrainerLib.calibrate import calibrate_file

    result = calibrate_file(args.model, out, fs, method=args.method, data=data, overwrite=args.overwrite,
                            sensitivity=args.sensitivity, island_sizes=island_sizes, cine_gate=args.cine_gate,
                            roi_patches=args.roi_patches)
    card = result["card"]
    summary = {"model": str(out), "calibration": card.get("calibration"),
               "classifier_threshold": card.get("classifier_threshold"), "operating_point": card.get("operating_point"),
               "cine_threshold": card.get("cine_threshold"), "roi_patches": card.get("roi_patches", 5),
               "feature_statistics": {k: v for k, v in card["feature_statistics"].items() if k not in ("mean", "std")},
               "reliability_png": result["figure"], "operating_point_png": result.get("operating_point_figure")}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        cal = card.get("calibration")
        if cal:
            kept = " (the model's own, kept)" if args.method == "none" else ""
            ece = (f", ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
                   if "ece_before" in cal and "ece_after" in cal else "")
            print(f"calibration: {cal.get('method', args.method)}{kept}, temperature {cal['temperature']:.3f}, "
                  f"bias {cal.get('bias', 0.0):.3f}{ece}")
        op = card.get("operating_point")
        if op:
            spec = "undefined" if op["specificity"] is None else f"{op['specificity']:.2f}"
            island = f", islands >= {op['min_island_px']} px" if "min_island_px" in op else ""
            if card.get("cine_threshold") is not None:
                island += f", cine threshold {card['cine_threshold']:.3f}"
            if card.get("roi_patches") is not None:
                island += f", ROI from the {card['roi_patches']} most probable patches"
            # Without --sensitivity the model's point is carried to the new scale: its figures are the old data's.
            # Frames the model trained on (the warning above) are not held out: the figures say so.
            measured = "frames, some of them the model's training data" if overlap else "held-out frames"
            where = (measured if args.sensitivity is not None else
                     f"frames of the model's earlier point ({printable(str(op.get('data', 'its own data')), 80)}; "
                     "carried over, not measured here: pass --sensitivity to choose it on this data)")
            # The spread over patients: an estimate from these patients, which new ones miss about half the time.
            spread = (f"; standard error {op['sensitivity_se']:.3f} over {op['calcified_patients']} patients with "
                      "calcium" if op.get("sensitivity_se") is not None else "")
            # The ceiling: near it two cards differ least (docs/learning.md, session 49).
            spread += f"; at most {op['ceiling']:.3f} at any threshold" if op.get("ceiling") is not None else ""
            print(f"operating point: classifier threshold {op['threshold']:.3f}{island}, frame sensitivity "
                  f"{op['sensitivity']:.2f} (target {op['target_sensitivity']:.2f}{spread}), specificity {spec} "
                  f"on {op['positive_frames']} + {op['negative_frames']} {where}")
        st = summary["feature_statistics"]
        print(f"activation statistics: {st['frames']} frames, frame score median {st['frame_score_median']:.3g}, "
              f"99th percentile {st['frame_score_q99']:.3g}")
        figures = [Path(f).name for f in (result["figure"], result.get("operating_point_figure")) if f]
        print(f"wrote {out} (+ {out.with_suffix('.json').name}, {', '.join(figures)})")
    return 0


def training_overlap(meta: dict, patients, dataset: Path | None) -> str | None:
    """Which calibration patients the model trained on, as the start of a warning line, or None.

    Parameters
    ----------
    meta : dict
        The model's metadata; its ``training`` -> ``data`` (written by ``cac train``) records the
        dataset's ``manifest_sha256_16``, its name (``phantom-pool-N-seed-S`` for a phantom pool) and
        the ``val_patients`` held out for checkpoint selection.
    patients : sequence of str
        The patient id of every calibration frame.
    dataset : Path or None
        The calibration dataset folder (None: a phantom pool).

    Returns
    -------
    str or None
        E.g. ``"3 of the 4 calibration patients are in the data the model was trained on (the same
        dataset: ...)"``; None when no overlap is known (a model without a training record: nothing to say).

    Examples
    --------
    >>> meta = {"training": {"data": {"dataset": "phantom-pool-3-seed-0", "val_patients": ["S1000_P00002"]}}}
    >>> training_overlap(meta, ["S1000_P00001", "S1000_P00002", "S2000_P00000"], None)
    '2 of the 3 calibration patients are in the data the model was trained on (1 trained it, 1 chose its \
checkpoints)'
    >>> training_overlap(meta, ["S2000_P00000"], None) is None
    True
    """
    import re

    from CACIdentifierLib.errors import printable

    data = (meta.get("training") or {}).get("data") or {}
    if not isinstance(data, dict):
        return None
    ours = {str(p) for p in patients}
    val = {str(p) for p in data.get("val_patients") or []}
    trained: set = set()
    same = False
    fingerprint = data.get("manifest_sha256_16")
    if dataset is not None and fingerprint:
        from .cli_train import _dataset_fingerprint

        same = _dataset_fingerprint(dataset) == fingerprint
        if same:  # the very dataset: every patient not held out for validation trained the model
            trained = ours - val
    pool = re.fullmatch(r"phantom-pool-(\d+)-seed-(-?\d+)", str(data.get("dataset", "")))
    if pool:
        # A pool's patients are numbered from 0 under seed 1000 + S (cac train); a stream added some.
        from CACTrainerLib.phantom_pool import patient_name

        n, seed = int(pool.group(1)), 1000 + int(pool.group(2))
        train = data.get("train") or {}
        if "window_patients" in train:
            n += max(0, int(train.get("patients", 0)) - int(train["window_patients"]))
        trained |= ours & {patient_name(seed, i) for i in range(n)}
        trained -= val
    hit_train, hit_val = ours & trained, ours & val
    if not (hit_train or hit_val or same):
        return None
    if not (hit_train or same):
        # Ids alone: another dataset's P001 may be another patient, so the line says so.
        names = sorted(hit_val)
        shown = printable(", ".join(names[:4]), 80) + (", ..." if len(names) > 4 else "")
        return (f"{len(names)} of the {len(ours)} calibration patients have the ids of the patients that chose "
                f"the model's checkpoints ({shown}), unless they are other patients with the same ids")
    parts = [f"{len(hit_train)} trained it" if hit_train else "",
             f"{len(hit_val)} chose its checkpoints" if hit_val else "",
             "the same dataset: its manifest.json is the one in the model card" if same else ""]
    return (f"{len(hit_train | hit_val)} of the {len(ours)} calibration patients are in the data the model was "
            f"trained on ({', '.join(part for part in parts if part)})")


def parse_island_sizes(text: str | None) -> tuple[int, ...]:
    """``--island-sizes``: comma-separated pixel counts, or ``none``; not given: ``calibrate.ISLAND_SIZES``.

    >>> parse_island_sizes("500,250"), parse_island_sizes("none"), parse_island_sizes(None)
    ((500, 250), (), (500, 250))
    """
    from CACIdentifierLib.errors import CacError

    if text is None:
        from CACTrainerLib.calibrate import ISLAND_SIZES

        return tuple(ISLAND_SIZES)
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(not 0 <= s <= 10**6 for s in sizes):
        raise CacError(f"--island-sizes {text!r} must be pixel counts 0-1000000 separated by commas "
                       "(e.g. 500,250), or none")
    return sizes
