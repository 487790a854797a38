"""``cac train``: two-stage training, cross-validation folds and their summary.

::

    cac train DATASET --out MODEL.safetensors --cv none          # the shipped-model recipe
    cac train DATASET --out RUN_DIR --cv patient [--fold K]       # leave-one-patient-out CV
    cac train --summarize RUN_DIR                                  # merge fold_K.json files
    cac train DATASET --out MODEL.safetensors --nproc 4            # data-parallel, 4 processes
    torchrun --nproc_per_node 4 -m cac.cli train DATASET --out MODEL.safetensors

Data-parallel runs (:mod:`CACTrainerLib.distributed`) keep the recipe's global
batch (each of the N ranks trains on batch/N of it); only rank 0 writes.  A
fold whose ``fold_K.json`` exists is skipped (exit 0), and with ``--resume``
a fold continues from its checkpoint or starts when it has none, so a fold
job can simply be rerun (cluster requeue).

Progress goes to stdout as JSON lines (``--json``; one object per event:
``start``, ``epoch``, ``stage_done``, ``fold``, ``fold_done``, ``done``) and
as a progress bar on stderr when it is a terminal.  Checkpoints are written
after every epoch into the run folder (``--run-dir``; by default
``MODEL.run/`` next to the model, or ``RUN_DIR/fold_K/``); ``--resume``
continues an interrupted run from there.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import sys
from pathlib import Path

from CACIdentifierLib.errors import CacError, CacWarning, printable

from .train_events import format_line, time_left


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the double-head ResUNet-18 (two stages) or run cross-validation",
        description="Two-stage training (classifier, then decoder with the classifier frozen) on a dataset "
        "with a manifest.json (see `cac phantom`), as in De Rose et al. 2025.",
    )
    p.add_argument("dataset", nargs="?", help="dataset folder with manifest.json")
    p.add_argument("--out", help="model file (.safetensors) for --cv none, or run folder for cross-validation")
    p.add_argument("--cv", choices=("patient", "acquisition", "none"), default="none",
                   help="leave-one-patient-out (default for CV), leave-one-acquisition-out (the paper), "
                   "or none: train on everything (default)")
    p.add_argument("--fold", type=int, help="run only this fold (0-based) and write RUN/fold_K.json")
    p.add_argument("--summarize", metavar="RUN_DIR", help="merge RUN_DIR/fold_*.json into report.json/report.md")
    p.add_argument("--epochs", type=int, help="epochs of both stages (paper: 100)")
    p.add_argument("--epochs1", type=int, help="classifier epochs (recipe's: default 12, paper 100)")
    p.add_argument("--epochs2", type=int, help="decoder epochs (recipe's: default 2, paper 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--phantom-pool", type=int, metavar="N",
                   help="train on N new domain-randomised phantom patients generated in memory "
                        "(instead of DATASET; patients numbered by --seed)")
    p.add_argument("--refresh-patients", type=int, default=0, metavar="K",
                   help="with --phantom-pool: every epoch, replace the K oldest training patients with K new "
                        "ones (a window sliding over an endless stream of patients, so a long run cannot "
                        "memorise them; validation patients stay fixed)")
    p.add_argument("--counterfactual-twins", action="store_true",
                   help="with --phantom-pool and --refresh-patients: add each calcified training cine's twin, "
                        "its calcium frames rendered again without the calcium and labelled calcium-free (same "
                        "anatomy, metal and noise: only the calcium tells the two apart)")
    p.add_argument("--recipe", choices=("default", "paper"), default="default",
                   help="default: joint training with a dense auxiliary loss, for a CPU budget; "
                        "paper: the paper's two-stage protocol (100 + 100 epochs, for a GPU)")
    p.add_argument("--decoder-patches", choices=("balanced", "positive"),
                   help="stage-2 (decoder) patches: balanced positives and negatives (default), or the "
                        "positive patches only (the classifier's gate decides whether, the decoder where)")
    p.add_argument("--select1", choices=("f1", "auc", "last"),
                   help="stage-1 epoch kept: highest validation F1 at the classifier threshold (default), highest "
                        "validation AUC, or the last epoch of the schedule")
    p.add_argument("--select2", choices=("iom", "loss"),
                   help="stage-2 epoch kept: highest mean validation IoM (the paper; recipe paper) or lowest "
                        "validation decoder loss (recipe default; IoM grows with larger ROIs)")
    p.add_argument("--decoder-detection", type=float, metavar="W",
                   help="stage 2: add W times a per-patch detection loss (an ROI inside ROI_GT where there is "
                        "calcium, none outside it) to the paper's decoder loss (default 0)")
    p.add_argument("--hard-negative-init", choices=("one", "mean"),
                   help="hard-negative score of a patch not drawn yet: one (default; unseen negatives then "
                        "dominate the score-weighted draw) or mean (the drawn negatives' mean)")
    p.add_argument("--metal-negative-weight", type=float, metavar="W",
                   help="weigh negative patches holding dense metal (phantom truth: sternal wires, clips, "
                        "stents) W times in the hard-negative draw (default 1: no preference)")
    p.add_argument("--aux-weight", type=float, metavar="W",
                   help="stage 1: weight of the dense ROI_GT loss through the decoder (recipe's: default 1, "
                        "paper 0: the classifier's BCE only, a step ~2.4x cheaper)")
    p.add_argument("--lr1", type=float, help="stage-1 learning rate (recipe's: default 1e-3, paper 1e-4)")
    p.add_argument("--lr2", type=float, help="decoder learning rate (recipe's: default 3e-4, paper 1e-3)")
    p.add_argument("--frames-per-acquisition", type=int, default=8,
                   help="evenly spaced annotated non-contrast frames per acquisition (default 8; 0: all, or 6 with "
                        "--phantom-pool)")
    p.add_argument("--samples-per-epoch", type=int, help="patches per epoch (default: balanced set size)")
    p.add_argument("--no-balance", action="store_true", help="do not balance positive/negative patches")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--display-augment", type=float, metavar="P",
                   help="put a share P of the training patch pairs through XA display processing (harmonization "
                        "and edge enhancement at random strengths), which real systems apply and the phantom does "
                        "not (default recipe: 0.5; paper recipe: 0)")
    p.add_argument("--rebalance-step", type=float,
                   help="per-epoch decrease of the GDL weight alpha (Kervadec et al.: 0.01)")
    p.add_argument("--width", type=int, default=None,
                   help="network width (ResNet-18: 64; default: 64, or --init's width)")
    p.add_argument("--block1-pool", action=argparse.BooleanOptionalAction, default=None,
                   help="Block1's max-pool (ResNet, the paper; default: on, or --init's setting); "
                   "--no-block1-pool keeps Block2..Block6 at twice the resolution for small deposits, "
                   "at about 4x the compute (a pooled --init model can be fine-tuned without it)")
    p.add_argument("--classifier-topk", type=int, default=None, metavar="K",
                   help="classifier readout: 0 = global average pooling (the paper; default, or --init's "
                   "setting); K > 0 = mean of the K largest of the fc's logits at Block6's locations "
                   "(multiple-instance pooling: a small deposit is not averaged away)")
    p.add_argument("--residual-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="a second input channel: each frame minus the median of its cine's non-contrast "
                   "frames, which removes what does not move (spine, ribs, sternal wires, field edges) and "
                   "keeps what moves with the heart (default: off, or --init's setting; a frame-only --init "
                   "model is widened with zero weights for it)")
    p.add_argument("--vessel-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="a third input channel under the non-contrast head: the residual of the paired "
                   "contrast patch (the vessels, pixel by pixel at the same cardiac phase); implies "
                   "--residual-channel (default: off, or --init's setting; a narrower --init model is "
                   "widened with zero weights for it)")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this model's weights (fine-tuning, e.g. the shipped default) "
                   "instead of a random initialisation; with --epochs 0 and --cv, the model is only "
                   "tested on each fold (external validation)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of training patients held out for checkpoint selection")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--no-amp", action="store_true", help="no bf16/fp16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC tensors (default: on CUDA only; on a CPU 1.5-1.7x faster where measured, "
                        "docs/learning.md, Speed)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch, 1 or more (default: torch's choice, usually every core)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader processes cutting and augmenting batches (GPU: 4-12; CPU: 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N processes on this machine (one per GPU; gloo on the CPU), "
                        "started with torch's launcher (torchrun); --batch-size is the global batch")
    p.add_argument("--sync-bn", action="store_true",
                   help="data-parallel runs: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA) "
                        "instead of each rank's share")
    p.add_argument("--run-dir", help="checkpoint folder (default MODEL.run/; with --cv, the folds' checkpoints go "
                                     "to RUN_DIR/fold_K/, RUN_DIR being OUT by default)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="weights of the saved model")
    p.add_argument("--keep-epochs", action="store_true",
                   help="write every epoch's model to RUN_DIR/epochs/ (stageS_epochNNN.safetensors + card), "
                        "to score or average single epochs later")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's checkpoint (folds: or start the fold when it has none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs; without --resume, an earlier run's checkpoint in the "
                        "run folder is deleted and the run starts over")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (default when stdout is not a terminal)")
    p.set_defaults(func=run)


def _config(args):
    from CACTrainerLib.recipes import RECIPES, recipe_config
    from CACTrainerLib.training import check_config

    name = getattr(args, "recipe", None) or "default"
    # Each given count is checked, also one that --epochs1/--epochs2 override: a typo is never ignored.
    for option, value in (("--epochs", args.epochs), ("--epochs1", args.epochs1), ("--epochs2", args.epochs2)):
        if value is not None and value < 0:
            raise CacError(f"{option} {value} must be 0 or more")
    if args.epochs is not None and args.epochs1 is not None and args.epochs2 is not None:
        raise CacError("--epochs sets both stages and --epochs1 and --epochs2 set each: give --epochs, or "
                       "--epochs1 and --epochs2")
    # The learning rates are checked here as well as in check_config, which allows 0 (a test of the loop).
    for option, value in (("--lr1", args.lr1), ("--lr2", args.lr2)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CacError(f"{option} {value} must be a finite number > 0, e.g. 1e-3 (or leave it out for "
                           "the recipe's)")
    e1 = args.epochs1 if args.epochs1 is not None else (args.epochs if args.epochs is not None
                                                         else RECIPES[name]["epochs1"])
    e2 = args.epochs2 if args.epochs2 is not None else (args.epochs if args.epochs is not None
                                                         else RECIPES[name]["epochs2"])
    if args.init:
        if e1 < 0 or e2 < 0:
            raise CacError("epochs must be 0 or more")
        if e1 == 0 and e2 == 0 and args.cv == "none" and not args.summarize:
            # It would write --init's weights again, without its calibration and operating point.
            raise CacError("--epochs 0 trains nothing: with --cv patient or acquisition it tests --init on each "
                           "fold; to score a model on data use cac evaluate or cac identify")
    elif e1 < 1 or e2 < 1:
        raise CacError("epochs must be at least 1 (0 only with --init: evaluate a model without training)")
    if args.batch_size < 2:
        raise CacError("--batch-size must be at least 2 (BatchNorm needs two samples)")
    init_arch = _init_architecture(args)
    # The width sets every weight's shape: a fine-tune takes its --init model's, and a different one
    # is refused here rather than after minutes of data generation.
    init_width = int(init_arch.get("width", 64))
    width = int(args.width) if args.width is not None else init_width
    if width < 1:  # before --init's width is compared: the one line says what --width can be
        raise CacError(f"--width {width} must be 1 or more (ResNet-18: 64; --init's width when left out)")
    if init_arch and init_width != width:
        raise CacError(f"--width {width}: the --init model {args.init} has architecture {init_arch}; "
                       "use the same --width (or leave it out) or another model")
    arch = {} if width == 64 else {"width": width}
    if not _inherited(args, "block1_pool", True, init_arch):
        arch["block1_pool"] = False
    topk = _inherited(args, "classifier_topk", 0, init_arch)
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise CacError(f"--classifier-topk must be 0 or a positive integer, got {topk}")
    if topk:
        arch["classifier_topk"] = int(topk)
    from CACIdentifierLib.background import FRAME_AND_RESIDUAL, FRAME_RESIDUAL_AND_VESSELS, IN_CHANNELS

    init_inputs = init_arch.get("inputs", "frame")
    residual = getattr(args, "residual_channel", None)
    vessels = getattr(args, "vessel_channel", None)
    if residual is None:
        residual = init_inputs in IN_CHANNELS or bool(vessels)
    elif not residual and init_inputs in IN_CHANNELS:
        raise CacError("--no-residual-channel: the --init model reads the residual channel; "
                       "a channel cannot be taken away from it")
    if vessels is None:
        vessels = init_inputs == FRAME_RESIDUAL_AND_VESSELS
    elif not vessels and init_inputs == FRAME_RESIDUAL_AND_VESSELS:
        raise CacError("--no-vessel-channel: the --init model reads the vessel channel; "
                       "a channel cannot be taken away from it")
    if vessels and not residual:
        raise CacError("--vessel-channel needs the residual channel; leave out --no-residual-channel")
    inputs = FRAME_RESIDUAL_AND_VESSELS if vessels else FRAME_AND_RESIDUAL if residual else None
    if inputs is not None:
        arch.update(inputs=inputs, in_channels=IN_CHANNELS[inputs])
    config = recipe_config(name, epochs1=e1, epochs2=e2, batch_size=args.batch_size, lr1=args.lr1,
                           lr2=args.lr2, seed=args.seed, device=args.device, amp=not args.no_amp,
                           balanced=not args.no_balance, augment=not args.no_augment,
                           display_augment=getattr(args, "display_augment", None),
                           samples_per_epoch=args.samples_per_epoch, rebalance_step=args.rebalance_step,
                           architecture=arch, num_threads=args.threads, init=_init_model(args.init),
                           channels_last=getattr(args, "channels_last", None),
                           workers=int(getattr(args, "workers", 0) or 0),
                           refresh_patients=int(getattr(args, "refresh_patients", 0) or 0),
                           decoder_patches=getattr(args, "decoder_patches", None),
                           select1=getattr(args, "select1", None),
                           select2=getattr(args, "select2", None),
                           decoder_detection=getattr(args, "decoder_detection", None),
                           hard_negative_init=getattr(args, "hard_negative_init", None),
                           metal_negative_weight=getattr(args, "metal_negative_weight", None),
                           aux_weight=getattr(args, "aux_weight", None),
                           keep_epochs=bool(getattr(args, "keep_epochs", False)))
    check_config(config)  # before minutes of data generation
    return config


def _init_architecture(args) -> dict:
    """The --init model's architecture (its header only), or {} without --init."""
    if args.init and Path(args.init).is_file():
        from CACIdentifierLib.modelio import read_metadata

        return read_metadata(args.init)["architecture"]
    return {}


def _inherited(args, key: str, default, init_arch: dict):
    """An architecture option that changes no weight's shape: as given, else --init's setting, else ``default``."""
    if getattr(args, key, None) is not None:
        return getattr(args, key)
    return init_arch.get(key, default)


def _init_model(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise CacError(f"--init model {path} does not exist; give a .safetensors model file")
    return str(Path(path).resolve())


def _emitter(as_json: bool, data: str = ""):
    """The ``emit`` of a run: every event as a JSON line, or (``as_json`` false) a short line for a person.

    ``data``: what the run trains on, for the human start line (the start event does not say).
    """
    seconds: dict = {}  # stage -> the seconds of its epochs so far, for the time left

    def emit(event: dict) -> None:
        if as_json:
            print(format_line(event), flush=True)
            return
        line = _human_line(event, data)
        if line and event.get("event") == "epoch":
            line += time_left(seconds, event)
        if line:
            print(line, flush=True)

    return emit


def _count(n, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _frames_of(summary: dict | None) -> str:
    """``48 frames of 3 patients`` from a FrameSet summary."""
    if not summary:
        return "no frames"
    return f"{_count(summary['frames'], 'frame')} of {_count(summary.get('patients', '?'), 'patient')}"


def _human_line(event: dict, data: str = "") -> str | None:
    """One line for a person for a progress event, or None for an event not shown in a terminal."""
    kind = event.get("event")
    if kind == "epoch":
        parts = [f"stage {event['stage']} epoch {event['epoch']}/{event['epochs']}",
                 f"train {event['train_loss']:.4f}"]
        for key in ("val_loss", "val_f1", "val_auc", "val_auc_within_position", "val_iom"):
            if event.get(key) is not None:
                name = "(within positions)" if key == "val_auc_within_position" else key
                parts.append(f"{name} {event[key]:.3f}")
        parts.append(f"{event['seconds']:.0f} s" + (" *" if event.get("best") else ""))
        return "  ".join(parts)
    if kind == "start":
        config = event.get("config") or {}
        val = event.get("val")
        held = (f"{_frames_of(val)} to validate" if val
                else "none held out to validate (the last epoch is kept)")
        autocast = event.get("autocast")
        device = f"{event.get('device')}" + (f" ({autocast})" if autocast and autocast != "None" else "")
        return (f"training on {data or 'the data'}: {_frames_of(event.get('train'))} to train, {held}; "
                f"device {device}; {config.get('epochs1', '?')} + {config.get('epochs2', '?')} epochs "
                "(stage 1 + stage 2)")
    if kind == "resume":
        return f"resuming the run folder's checkpoint: stage {event.get('stage')}, {event.get('epoch')} epochs done"
    if kind == "done":
        best = event.get("best") or {}
        kept = [f"stage {s} epoch {(best.get(f'stage{s}') or {}).get('epoch')}"
                for s in (1, 2) if (best.get(f"stage{s}") or {}).get("epoch") is not None]
        return f"training done in {event.get('seconds', 0):.0f} s" + (f" (kept {', '.join(kept)})" if kept else "")
    if kind == "saved":
        from CACIdentifierLib.modelio import card_path

        curves = (f"curves {printable(event['curves'], None)}" if event.get("curves")
                  else "no curves: they could not be drawn")
        return (f"model written to {printable(event['model'], None)} "
                f"(card {printable(str(card_path(event['model'])), None)}, {curves})")
    if kind == "fold":
        test = ", ".join(map(str, event.get("test") or [])) or "?"
        k = event.get("fold")
        number = f"{k + 1} of {event.get('folds', '?')}, " if isinstance(k, int) else ""
        return f"fold {k} ({number}by {event.get('by')}): testing {test}"
    if kind == "fold_done":
        m = event.get("metrics") or {}
        scores = ", ".join(f"{k} {m[k]:.3f}" for k in ("precision", "recall", "f1", "iom")
                           if isinstance(m.get(k), (int, float)))
        return f"fold {event.get('fold')} done" + (f": {scores}" if scores else "")
    return None


def _curves_path(out: Path) -> Path:
    return out.with_name(out.stem + "_curves.png")


def _dataset_fingerprint(dataset: Path) -> str:
    manifest = dataset / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else ""


def run(args) -> int:
    from CACTrainerLib import crossval, distributed

    if args.summarize:
        report = crossval.summarize(args.summarize)
        if args.json:
            print(json.dumps({k: v for k, v in report.items() if k != "markdown"}))
        else:
            print(report["markdown"], end="")
        return 0
    nproc = getattr(args, "nproc", None)
    if nproc is not None and nproc != 1 and not distributed.requested():
        return _launch(args, nproc)
    ctx = distributed.init(args.device, batch_size=args.batch_size, sync_bn=getattr(args, "sync_bn", False))
    try:
        return _run(args, ctx)
    finally:
        distributed.shutdown()


def _launch(args, nproc: int) -> int:
    """``--nproc N``: run this very command in N processes under torch's launcher."""
    import torch
    from CACTrainerLib import distributed

    if nproc < 1:
        raise CacError("--nproc must be 1 or more")
    if args.batch_size % nproc or args.batch_size // nproc < 2:
        raise CacError(f"--batch-size {args.batch_size} cannot be split into {nproc} equal shares of 2 or more; "
                       f"use a multiple of {2 * nproc} or fewer processes")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind = (args.device or "auto").lower()
    if kind in ("auto", "cuda") and gpus and nproc > gpus:
        raise CacError(f"--nproc {nproc} but only {gpus} CUDA device(s); use --nproc {gpus} or fewer")
    if kind == "cuda" and not gpus:
        raise CacError("--device cuda requested but CUDA is not available; use --device cpu or auto")
    if getattr(args, "sync_bn", False) and (kind == "cpu" or not gpus):
        raise CacError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
    if sys.argv[1:2] != ["train"]:
        raise CacError("--nproc works from the `cac train` command line; from Python, start torchrun yourself")
    cmd = distributed.launch_command(nproc, distributed.strip_nproc(sys.argv[1:]), __package__ + ".cli")
    return _run_launcher(cmd)


def _run_launcher(cmd, grace_s: float = 3.0) -> int:
    """Run torch's launcher in a process group of its own and wait for it.

    If this process is interrupted (Ctrl-C, or a SIGINT from a parent program that reaches this
    process only), the launcher *and its workers* get SIGINT, then SIGKILL after ``grace_s``
    seconds, and the interruption goes on to the command line's handler (``cac: interrupted``).
    Without the group, a SIGINT to this process alone left the workers training.
    """
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            raise
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the launcher, so that an empty group really is empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise


def _run(args, ctx) -> int:
    from CACIdentifierLib.progress import terminal_progress
    from CACTrainerLib import crossval
    from CACTrainerLib import training as T

    main = ctx is None or ctx.main
    if not main:
        import warnings

        warnings.simplefilter("ignore")  # rank 0 says it once
    pool = getattr(args, "phantom_pool", None)
    if args.dataset and pool is not None:
        raise CacError(f"give a DATASET folder or --phantom-pool N, not both (got {printable(args.dataset, 80)} "
                       f"and --phantom-pool {pool})")
    if (not args.dataset and pool is None) or not args.out:
        raise CacError("give a DATASET folder (or --phantom-pool N) and --out (or --summarize RUN_DIR)")
    if pool is not None and pool < 2:
        raise CacError("--phantom-pool needs at least 2 patients (one is held out for validation)")
    if args.cv != "none" and Path(args.out).suffix.lower() == ".safetensors":
        # With --cv, --out is created as a folder: a folder named like a model file would only mislead.
        raise CacError(f"--out {printable(args.out, 120)}: with --cv {args.cv}, --out is a run folder (one "
                       "fold_K.json per fold, report.md), not a model file; give a folder name such as "
                       f"runs/cv_{args.cv}")
    if not 0.0 <= args.val_fraction < 1.0:  # NaN too; checked again at the split, after the data are read
        raise CacError(f"--val-fraction {args.val_fraction} must be at least 0 and below 1")
    if args.frames_per_acquisition is not None and args.frames_per_acquisition < 0:
        raise CacError(f"--frames-per-acquisition {args.frames_per_acquisition} must be 0 (all) or more")
    refresh = int(getattr(args, "refresh_patients", 0) or 0)
    if refresh < 0:
        raise CacError("--refresh-patients must be 0 or more")
    if refresh and (pool is None or args.cv != "none"):
        raise CacError("--refresh-patients needs --phantom-pool N and --cv none (a dataset on disk cannot grow)")
    twins = bool(getattr(args, "counterfactual_twins", False))
    if twins and not refresh:
        raise CacError("--counterfactual-twins needs --phantom-pool N with --refresh-patients K (the twins are "
                       "rendered for the training stream only; the validation patients stay as drawn)")
    dataset = Path(args.dataset) if args.dataset else Path(f"phantom-pool-{pool}-seed-{args.seed}")
    if args.dataset and not dataset.is_dir():
        raise CacError(f"{dataset} is a file, not a dataset folder; give the folder holding manifest.json"
                       if dataset.exists() else f"dataset folder {dataset} does not exist")
    as_json = args.json or not sys.stdout.isatty()
    data = (f"{pool} phantom patients (--seed {args.seed})" if pool is not None
            else printable(str(dataset), 120))
    emit = _emitter(as_json, data) if main else (lambda event: None)
    progress = terminal_progress() if main else (lambda *a: None)
    config = _config(args)
    if ctx is not None:
        config.device = ctx.device  # rank k: GPU LOCAL_RANK, or the CPU
        emit({"event": "distributed", "ranks": ctx.world, "backend": ctx.backend, "sync_bn": ctx.sync_bn,
              "batch_per_rank": args.batch_size // ctx.world})
    out = Path(args.out)
    if args.cv == "none":
        if args.fold is not None:
            raise CacError("--fold needs --cv patient or --cv acquisition")
        if out.suffix != ".safetensors":
            raise CacError(f"--out {out} must be a .safetensors model file with --cv none")
        if out.exists() and not args.overwrite:
            raise CacError(f"{out} already exists; pass --overwrite to replace it or choose another name")
        # Every output (model, card, curves) is checked before training, not after it.
        from CACIdentifierLib.fileutil import check_not_input, check_writable
        from CACIdentifierLib.modelio import card_path, check_model_path

        check_model_path(out)
        check_not_input(out, args.init)  # a fine-tune never replaces the model it starts from
        for path in (out, card_path(out), _curves_path(out)):
            check_writable(path, args.overwrite)
    from CACTrainerLib.checkpoint_io import data_source

    # Recorded in the checkpoints: a resume on other data is refused, and CAC Trainer offers none.
    source = data_source(None if pool else dataset, phantom_pool=pool or 0, refresh_patients=refresh,
                         seed=args.seed, cv=args.cv, twins=twins)
    if refresh:
        return _train_stream(dataset, args, config, out, emit, progress, source=source)
    if args.cv == "none":
        # No reference kept here: _train_final drops the whole set once it is split (its frames once, not twice).
        return _train_final(_load(dataset, args, progress, background=_needs_background(config)), dataset, args,
                            config, out, emit, progress, source=source)
    fs = _load(dataset, args, progress, background=_needs_background(config))
    folds = crossval.make_folds(fs, args.cv)
    todo = [args.fold] if args.fold is not None else list(range(len(folds)))
    if args.fold is not None and not 0 <= args.fold < len(folds):
        raise CacError(f"fold {args.fold} does not exist: cross-validation by {args.cv} has folds "
                       f"0..{len(folds) - 1}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    for k in todo:
        done = out / f"fold_{k}.json"
        if done.exists() and not args.overwrite:
            # Idempotent fold jobs: a rerun (cluster requeue, shell loop run twice) does nothing.
            if main:
                print(f"cac: fold {k} is already done ({done}); nothing to do (--overwrite runs it again)",
                      file=sys.stderr)
                emit({"event": "fold_skipped", "fold": k, "file": str(done)})
            continue
        # --resume on a fold: continue its checkpoint if it has one, else start it.
        checkpoints = Path(args.run_dir) if args.run_dir else out
        resume = args.resume and (checkpoints / f"fold_{k}" / T.CHECKPOINT_JSON).exists()
        crossval.run_fold(fs, k, args.cv, config, out, resume=resume, emit=emit, progress=progress,
                          overwrite=args.overwrite, val_fraction=args.val_fraction, run_dir=checkpoints,
                          source=source)
    if args.fold is None and main:
        report = crossval.summarize(out)
        if not as_json:
            print(report["markdown"], end="")
    return 0


def _needs_background(config) -> bool:
    """Whether the model reads the residual channel, so its training frames need their cines' backgrounds."""
    from CACIdentifierLib.background import reads_background

    return reads_background(dict(config.architecture or {}).get("inputs"))


def _load(dataset: Path, args, progress, *, background: bool = True):
    from CACTrainerLib.dataset import build_frameset

    if getattr(args, "phantom_pool", None):
        from CACTrainerLib.phantom_pool import check_pool_memory, phantom_pool

        fpa = args.frames_per_acquisition or 6
        check_pool_memory(args.phantom_pool, fpa, background=background)
        return phantom_pool(args.phantom_pool, seed=1000 + args.seed, frames_per_acquisition=fpa,
                            progress=progress, background=background)

    fpa = args.frames_per_acquisition or None
    return build_frameset(dataset, frames_per_acquisition=fpa, progress=progress, background=background)


def _train_stream(dataset: Path, args, config, out: Path, emit, progress, *, source=None) -> int:
    """--phantom-pool N --refresh-patients K: fixed validation patients, a training window sliding over new ones."""
    from CACTrainerLib.crossval import validation_groups
    from CACTrainerLib.phantom_pool import PatientStream, check_pool_memory, patient_name, phantom_pool

    n, seed = int(args.phantom_pool), 1000 + args.seed
    val_names = validation_groups([patient_name(seed, i) for i in range(n)], args.val_fraction, args.seed)
    val_ids = [i for i in range(n) if patient_name(seed, i) in val_names]
    train_ids = [i for i in range(n) if i not in set(val_ids)]
    if not train_ids:
        raise CacError("--phantom-pool: no training patients left after the validation split; give more patients")
    fpa = args.frames_per_acquisition or 6
    bg = _needs_background(config)
    check_pool_memory(n, fpa, background=bg)  # the window and the validation patients: the N patients at once
    val_set = (phantom_pool(0, patients=val_ids, seed=seed, frames_per_acquisition=fpa, progress=progress,
                            background=bg)
               if val_ids else None)  # --val-fraction 0: no checkpoint selection, the last epoch is kept
    stream = PatientStream(train_ids, args.refresh_patients, next_patient=n, seed=seed,
                           frames_per_acquisition=fpa, progress=progress, background=bg,
                           twins=bool(getattr(args, "counterfactual_twins", False)))
    try:
        return _train_final(None, dataset, args, config, out, emit, progress, val_set=val_set, stream=stream,
                            source=source)
    finally:
        stream.close()  # a prefetch still running (an error, Ctrl-C) ends with the run


def _train_final(fs, dataset: Path, args, config, out: Path, emit, progress, *, val_set=None,
                 stream=None, source=None) -> int:
    from dataclasses import asdict

    import torch
    from CACIdentifierLib.modelio import save_model
    from CACTrainerLib import crossval, distributed
    from CACTrainerLib.checkpoint_io import default_run_dir
    from CACTrainerLib.evaluation import PER_ITEM_KEYS
    from CACTrainerLib.training import inference_metadata, plot_curves, train

    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(out)
    if stream is None:
        train_set, val_set = crossval.validation_split(fs, args.val_fraction, args.seed)
        fs = None  # the split copied its frames: the whole set is not held beside them for the whole run
        train_summary = train_set.summary()
    result = train(None if stream is not None else train_set, val_set, config, run_dir, resume=args.resume,
                   emit=emit, progress=progress, stream=stream, restart=args.overwrite and not args.resume,
                   source=source)
    if stream is not None:
        last = max(0, config.epochs1 + config.epochs2 - 1)
        train_summary = {"patients": stream.seen(last), "window_patients": len(stream.start),
                         "refresh_patients": config.refresh_patients}
    if not distributed.is_main():
        return 0  # rank 0 writes the curves and the model
    from CACIdentifierLib.fileutil import temporary_sibling

    curves = _curves_path(out)
    # Drawn aside and moved in only once the model and its card are saved: all three or none.
    curves_tmp = temporary_sibling(curves)
    try:
        plot_curves(result.history, curves_tmp, title=f"{printable(out.name, 80)}: training curves")
    except Exception as exc:  # a picture must never cost the trained model
        import warnings

        warnings.warn(f"the training curves could not be drawn ({printable(str(exc), 120)}); the model is saved "
                      "without them", CacWarning, stacklevel=1)
        curves_tmp.unlink(missing_ok=True)
    vm = {k: v for k, v in result.val_metrics.items() if k not in PER_ITEM_KEYS}
    metadata = {
        **inference_metadata(config),
        "training": {
            "data": {"dataset": dataset.name, "manifest_sha256_16": _dataset_fingerprint(dataset),
                     "frames_per_acquisition": args.frames_per_acquisition or "all",
                     "train": train_summary, "val": val_set.summary() if val_set is not None else None,
                     "val_patients": sorted(set(val_set.patient)) if val_set is not None else []},
            "command": "cac train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
            if len(sys.argv) > 1 and sys.argv[1] == "train" else "cac train (API)",
            "config": asdict(config),
            "epochs_run": {"stage1": sum(1 for r in result.history if r["stage"] == 1),
                           "stage2": sum(1 for r in result.history if r["stage"] == 2)},
            "best_epoch": {"stage1": (result.best.get("stage1") or {}).get("epoch"),
                           "stage2": (result.best.get("stage2") or {}).get("epoch")},
            "seconds": round(result.seconds, 1),
            "torch": torch.__version__,
        },
        "metrics": {"validation": vm},
    }
    dtype = torch.float16 if args.dtype == "float16" else None
    try:
        card = save_model(out, result.model, metadata, overwrite=args.overwrite, dtype=dtype)
        drawn = curves_tmp.exists()
        if drawn:
            os.replace(curves_tmp, curves)
    finally:
        if curves_tmp.exists():
            curves_tmp.unlink()
    emit({"event": "saved", "model": str(out), "sha256": card.get("sha256"), "curves": str(curves) if drawn else None})
    return 0
