"""``cac model-info`` and ``cac gradcam``: what a model is, and where its classifier looks."""

from __future__ import annotations

import json
import sys

from CACIdentifierLib.errors import CacError, printable


def register(subparsers) -> None:
    info = subparsers.add_parser(
        "model-info",
        help="parameters, FLOPs and metadata of a model (default: the model cac identify uses)",
        description=(
            "Print the parameter counts (total, classifier, decoder), the FLOPs per patch pair and per frame "
            "(5 patch pairs; FLOPs = 2 x multiply-accumulates of conv and linear layers) and the metadata of "
            "MODEL.safetensors; without a model, of the model cac identify uses without --model (the shipped "
            "default, or $CAC_MODEL); with --architecture, of the untrained default double-head ResUNet-18."
        ),
    )
    info.add_argument("model", nargs="?",
                      help="model file (.safetensors); omit for the model cac identify uses by default")
    info.add_argument("--architecture", action="store_true",
                      help="the untrained default architecture instead of a model file (no metadata)")
    info.add_argument("--json", action="store_true", help="print JSON on stdout")
    info.set_defaults(func=run_info)

    gc = subparsers.add_parser(
        "gradcam",
        help="Grad-CAM of the classifier (Block6) for one patch pair of a cine, as a PNG",
        description=(
            "Pair non-contrast frame K with a contrast frame (--contrast-frame, or the synchronization), cut "
            "both into the five 256x256 patches and save the Grad-CAM of the CAC classifier (Block6) for one "
            "patch (--patch, default: the most probable) over both patches."
        ),
    )
    gc.add_argument("model", help="model file (.safetensors)")
    gc.add_argument("cine", help="DICOM XA file, folder of DICOM or PNG/JPEG frames, .nrrd or .seq.nrrd")
    gc.add_argument("--frame", type=int, required=True, metavar="K", help="non-contrast frame (0-based)")
    gc.add_argument("--contrast-frame", type=int, metavar="J", help="contrast frame (0-based); default: synchronize")
    gc.add_argument("--patch", type=int, choices=range(5), metavar="P",
                    help="patch 0-4 (corners TL, TR, BL, BR, centre); default: the most probable")
    gc.add_argument("--layer", default="block6", help="encoder block: block6 (default, as the paper), block5 ... block2, block2_nc, block2_c, "
                         "block1_nc or block1_c")
    gc.add_argument("--out", required=True, help="output PNG")
    gc.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    gc.add_argument("--spacing", type=float, metavar="MM", help="pixel spacing when the file has none")
    gc.add_argument("--frame-time", type=float, dest="frame_time_ms", metavar="MS",
                    help="time between frames in ms when the file has none")
    gc.set_defaults(func=run_gradcam)


def model_summary(model, metadata: dict | None = None) -> dict:
    """Parameter counts, FLOPs per pair and per frame, and the metadata."""
    from CACIdentifierLib.network import count_flops

    n_cls = sum(p.numel() for p in model.classifier_parameters())
    n_dec = sum(p.numel() for p in model.decoder_parameters())
    f = count_flops(model)
    return {
        "architecture": model.arch_dict(),
        "parameters": {"total": n_cls + n_dec, "classifier": n_cls, "decoder": n_dec},
        "flops_per_patch_pair": {
            "classifier": 2 * f["classifier_macs"],
            "decoder": 2 * f["decoder_macs"],
            "total": f["flops"],
        },
        "flops_per_frame": {
            "classifier": 5 * 2 * f["classifier_macs"],
            "decoder": 5 * 2 * f["decoder_macs"],
            "total": 5 * f["flops"],
        },
        "metadata": metadata,
    }


def run_info(args) -> int:
    from CACIdentifierLib.network import ResUNet18

    if args.architecture and args.model:
        raise CacError("give a model file or --architecture, not both")
    if args.architecture:
        model, meta, name = ResUNet18(), None, "default architecture (untrained)"
    else:
        from CACIdentifierLib.modelio import load_model
        from CACIdentifierLib.resources import default_model_path

        # Without a file: the model `cac identify` would use, so "what am I running?" has an answer.
        path = args.model or default_model_path()
        model, meta = load_model(path)
        name = str(path) if args.model else f"{path} (the default model of cac identify)"
    summary = model_summary(model, meta)
    if args.json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    p, fp, ff = summary["parameters"], summary["flops_per_patch_pair"], summary["flops_per_frame"]
    print(f"model: {printable(name, limit=None)}")
    print(f"architecture: {json.dumps(summary['architecture'])}")
    print(f"parameters: {p['total']:,} (classifier {p['classifier']:,}, decoder {p['decoder']:,})")
    print(f"GFLOPs per patch pair: {fp['total'] / 1e9:.2f} (classifier {fp['classifier'] / 1e9:.2f}, "
          f"decoder {fp['decoder'] / 1e9:.2f})")
    print(f"GFLOPs per frame (5 pairs): {ff['total'] / 1e9:.2f} (classifier {ff['classifier'] / 1e9:.2f}, "
          f"decoder {ff['decoder'] / 1e9:.2f}; the decoder runs only on patches the classifier calls positive)")
    if meta:
        print("metadata:")
        for key in sorted(meta):
            if key == "architecture":
                continue
            if key == "feature_statistics":
                print(f"  {key}: {feature_statistics_summary(meta[key])}")
                continue
            print("\n".join(metadata_lines(key, meta[key], "  ")))
    return 0


def metadata_lines(key: str, value, indent: str = "", width: int = 100) -> list[str]:
    r"""A model card entry as readable lines: a long object one key per line, long lists counted.

    ``--json`` prints the card complete; the terminal gets floats to 4 significant digits, an object
    whose line would pass ``width`` characters split into its keys (indented), and a list of more than
    8 items counted (a card's validation patients, per-epoch figures).

    >>> print("\n".join(metadata_lines("metrics", {"auc": 0.81356, "patients": list(range(39)), "note": "x" * 90})))
    metrics:
      auc: 0.8136
      note: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      patients: [39 items: --json lists them]
    >>> metadata_lines("threshold", 0.24311064928770065)
    ['threshold: 0.2431']
    """
    def short(v):
        if isinstance(v, float):
            return float(f"{v:.4g}")
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items()}
        if isinstance(v, list):
            return [short(x) for x in v]
        return v

    if isinstance(value, list) and len(value) > 8:
        return [f"{indent}{key}: [{len(value)} items: --json lists them]"]
    line = f"{indent}{key}: {json.dumps(short(value), sort_keys=True)}"
    if len(line) <= width or not isinstance(value, dict) or not value:
        return [line]
    lines = [f"{indent}{key}:"]
    for k in sorted(value):
        lines += metadata_lines(str(k), value[k], indent + "  ", width)
    return lines


def feature_statistics_summary(stats: dict) -> str:
    """One readable line for a model card's ``feature_statistics`` (:mod:`CACIdentifierLib.ood`).

    The per-feature mean and SD (one value per channel of the classifier's
    Block6, 512 for the default model) are counted, not printed: ``--json``
    has them.

    >>> print(feature_statistics_summary({"mean": [0.0] * 64, "std": [1.0] * 64, "frames": 72,
    ...                                   "frame_score_median": 0.75, "frame_score_q99": 2.6, "data": "phantom"}))
    64 features from 72 frames (phantom); frame score median 0.75, 99th percentile 2.6: a cine whose median frame scores above 3.9 is flagged as unlike the model's data (per-feature mean and SD: --json)
    """
    from CACIdentifierLib.errors import printable
    from CACIdentifierLib.ood import MARGIN

    frames = stats.get("frames")
    text = f"{len(stats['mean'])} features"
    if frames is not None:
        text += f" from {frames} frames"
    if stats.get("data"):
        text += f" ({printable(str(stats['data']), 80)})"
    q99 = float(stats["frame_score_q99"])
    return (f"{text}; frame score median {float(stats['frame_score_median']):.3g}, 99th percentile {q99:.3g}: "
            f"a cine whose median frame scores above {MARGIN * q99:.3g} is flagged as unlike the model's data "
            "(per-feature mean and SD: --json)")


def _contrast_frame_for(result, k: int) -> int:
    """The contrast partner of non-contrast frame ``k`` in the synchronization ``result``."""
    for nc, c in result.pairs:
        if int(nc) == k:
            return int(c)
    nc_frames = [int(p[0]) for p in result.pairs]
    span = f"{min(nc_frames)}-{max(nc_frames)}" if nc_frames else "none"
    raise CacError(
        f"frame {k} is not a non-contrast frame with a synchronized contrast partner (paired non-contrast "
        f"frames: {span}); choose one of those or give --contrast-frame"
    )


def _warn_phase_mismatch(cine, sync, frame: int, contrast_frame: int) -> None:
    """Warn when the frame given as non-contrast lies after the contrast onset, or the contrast frame before it.

    The network reads the pair as (non-contrast, contrast); a swapped or misplaced pair gives a map of what
    the model was never trained on.  The onset is the synchronization's, or detected here.
    """
    import warnings

    from CACIdentifierLib.errors import CacWarning

    if sync is not None:
        onset = int(sync.onset_frame)
    else:
        from CACIdentifierLib.sync import detect_contrast_onset

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no onset found: nothing to compare against
            onset, score = detect_contrast_onset(cine.frames)
        if score == 0.0:
            return
    if frame >= onset:
        warnings.warn(f"--frame {frame} is at or after the contrast onset (frame {onset}): the map reads it as a "
                      f"non-contrast frame; choose a frame before {onset}", CacWarning, stacklevel=2)
    if contrast_frame < onset:
        warnings.warn(f"--contrast-frame {contrast_frame} is before the contrast onset (frame {onset}): the map "
                      f"reads it as the contrast frame; choose one from {onset} on", CacWarning, stacklevel=2)


def run_gradcam(args) -> int:
    import numpy as np
    import torch
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.fileutil import check_not_input, check_writable
    from CACIdentifierLib.modelio import load_model
    from CACIdentifierLib.patches import (
        FRAME_SIZE,
        extract_patches,
        normalize_frame,
        patch_origins,
        prepare_frame,
    )
    from CACTrainerLib.gradcam import LAYERS, grad_cam, save_gradcam_png

    if args.layer not in LAYERS:
        raise CacError(f"--layer {printable(args.layer, 40)} is not an encoder block on the classifier's path; "
                       f"choose one of {', '.join(LAYERS)}")

    if not str(args.out).lower().endswith(".png"):
        raise CacError(f"--out writes a PNG; give a name ending in .png, not {args.out}")
    check_not_input(args.out, args.cine, args.model)
    check_writable(args.out, args.overwrite)
    model, meta = load_model(args.model)
    spacing = None if args.spacing is None else (args.spacing, args.spacing)
    cine = load_cine(args.cine, spacing_mm=spacing, frame_time_ms=args.frame_time_ms)
    for name, k in (("--frame", args.frame), ("--contrast-frame", args.contrast_frame)):
        if k is not None and not 0 <= k < cine.n_frames:
            raise CacError(f"{name} {k} is outside the cine's frames 0-{cine.n_frames - 1}")
    from CACIdentifierLib.background import cine_background, head_inputs, model_inputs, reads_background

    inputs = model_inputs(model)
    residual = reads_background(inputs)
    sync = None
    if args.contrast_frame is None or residual:
        from CACIdentifierLib.sync import synchronize_cine

        sync = synchronize_cine(cine)
    j = args.contrast_frame if args.contrast_frame is not None else _contrast_frame_for(sync, args.frame)
    _warn_phase_mismatch(cine, sync, args.frame, j)
    pair = []
    for k in (args.frame, j):
        f512, _, _ = prepare_frame(cine.frames[k], cine.spacing_mm)
        pair.append(extract_patches(normalize_frame(f512))[:, None])
    if residual:
        # The model reads each patch with its residual against the cine's static background, as identify does.
        bg = extract_patches(cine_background(cine.frames, [int(p[0]) for p in sync.pairs] or [args.frame],
                                             cine.spacing_mm))[:, None]
    else:
        bg = None
    nc, c = head_inputs(*pair, bg, bg, inputs)
    with torch.inference_mode():
        probs = torch.sigmoid(model.classify(torch.from_numpy(nc), torch.from_numpy(c))).numpy()
    patch = args.patch if args.patch is not None else int(np.argmax(probs))
    cam, prob = grad_cam(model, nc[patch], c[patch], layer=args.layer, return_probability=True)
    origin = patch_origins(FRAME_SIZE, FRAME_SIZE)[patch]
    save_gradcam_png(
        args.out,
        nc[patch, 0],
        c[patch, 0],
        cam,
        title=f"frame {args.frame} / contrast {j}, patch {patch} at {origin} ({args.layer})",
        probability=prob,
        overwrite=args.overwrite,
        layer=args.layer,
    )
    print(f"P(CAC) per patch: {', '.join(f'{p:.3f}' for p in probs)}; Grad-CAM of patch {patch} -> {args.out}")
    return 0
