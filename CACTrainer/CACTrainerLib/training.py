"""Two-stage training of the double-head ResUNet-18 (paper, "Experimental details").

Stage 1 trains the classifier (both heads, Block3..Block6, fc) with binary
cross-entropy, Adam, learning rate 1e-4, batch 32, 100 epochs; the F1-score
on the validation patches is computed after every epoch and the best epoch's
weights are kept.  Stage 2 starts from those weights, freezes the classifier
(no gradients, BatchNorm statistics frozen: ``ResUNet18.freeze_classifier``)
and trains the U-Net-like decoder with Adam, learning rate 1e-3, batch 32, 100
epochs on ``alpha * GDL + (1 - alpha) * boundary`` with the rebalance schedule
(:mod:`CACTrainerLib.losses`); after every epoch the validation IoM is
computed *on whole frames as inference does it*: the five patches' ROI
probabilities gated by the classifier, stitched (max), refined (islands <
1000 px removed, Gaussian sigma 3, threshold 0.5) and compared with the
majority-vote calcium mask of the frame; the epoch with the best mean IoM over
the validation frames (mean rather than median: steadier on few frames) is
kept.  Without a validation set the last epoch of each stage is kept.

Repeatability: every epoch draws its order and augmentation from
``numpy.random.default_rng([seed, stage, epoch])`` and reseeds torch the same
way, so a run depends only on the seed, and a run resumed from the checkpoint
of epoch k (model, best model and Adam state in safetensors, the rest in
JSON -- nothing is ever unpickled) continues exactly as the uninterrupted run
would have (on CPU, same thread count).

Data-parallel runs (torchrun, ``cac train --nproc N``) split every global batch
over the ranks (:mod:`CACTrainerLib.distributed`); only rank 0 writes.

Progress: ``emit(dict)`` receives JSON-serialisable events (``start``,
``epoch``, ``stage_done``, ``done``); the CLI prints them as JSON lines on
stdout, which the CACTrainer widget parses.  ``progress(done, total, msg)``
is called after every batch (terminal progress bar, GUI Cancel).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from CACIdentifierLib.allocator import release_freed_memory
from CACIdentifierLib.background import FRAME_ONLY, IN_CHANNELS, INPUTS, model_inputs
from CACIdentifierLib.device import to_device
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.fileutil import atomic_output, folder_lock
from CACIdentifierLib.network import CLASSIFIER_THRESHOLD
from CACIdentifierLib.progress import ProgressCallback, no_progress
from CACIdentifierLib.refinement import DEFAULTS as REFINEMENT_DEFAULTS

from . import dataset, distributed, losses, targets
from .amp import MixedPrecision
from .evaluation import PER_ITEM_KEYS, evaluate

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
EPOCHS_DIR = "epochs"  # kept epochs (TrainConfig.keep_epochs)


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the paper's."""

    epochs1: int = 100
    epochs2: int = 100
    batch_size: int = 32
    lr1: float = 1e-4
    lr2: float = 1e-3
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast where the device supports it
    balanced: bool = True
    augment: bool = True
    # Probability that a training patch pair goes through XA display processing (harmonization and edge
    # enhancement, dataset.display_processing), which the training pool does not draw; 0: never (and with augment off).
    display_augment: float = 0.0
    samples_per_epoch: int | None = None
    roi_iterations: int = targets.DEFAULT_ITERATIONS
    roi_step_px: int = targets.DEFAULT_STEP_PX
    min_deposit_fraction: float = targets.DEFAULT_MIN_DEPOSIT_FRACTION
    rebalance_start: float = 1.0
    rebalance_step: float = 0.01
    rebalance_floor: float = 0.01
    classifier_threshold: float = CLASSIFIER_THRESHOLD
    cine_threshold: float | None = None  # a card's cine gate (temporal.cine_gate), set for scoring, never trained
    roi_patches: int = 5  # a card's roi_patches (refinement.most_probable_patches), set for scoring, never trained
    refinement: dict = field(default_factory=lambda: dict(REFINEMENT_DEFAULTS))
    architecture: dict = field(default_factory=dict)
    num_threads: int | None = None
    init: str | None = None  # model file whose weights start the run (fine-tuning), else random init
    # Recipe knobs (CACTrainerLib.recipes); the defaults are the paper's protocol.
    recipe: str = "paper"
    aux_weight: float = 0.0  # stage 1: weight of the dense ROI_GT loss through the decoder (0: BCE only)
    lr_schedule: str = "constant"  # or "cosine": linear warm-up, then cosine decay to 1 % (per step)
    warmup_frac: float = 0.0
    weight_decay: float = 0.0  # AdamW's decoupled weight decay when > 0
    hard_negative_frac: float = 0.0  # share of an epoch's negatives drawn by their last loss
    # Score of a patch not drawn yet: "one" (1.0, above a typical loss, so unseen negatives dominate the
    # score-weighted draw) or "mean" (unknown: NaN, drawn at the drawn negatives' mean score).
    hard_negative_init: str = "one"
    # Hard-negative draw weight of a negative patch holding dense metal (FrameSet.metal: a phantom's
    # sternal wires, clips, stents), times its score: the stream model's most confident false
    # positives were sternal wires (docs/learning.md).  1: no preference.
    metal_negative_weight: float = 1.0
    # NHWC tensors (None: on CUDA only).  On a 2-core AMD EPYC with AVX512-BF16 the joint step ran 1.7x faster
    # with them on top of bf16 (benchmarks/bench_training.py), but oneDNN's backward crashed (SIGSEGV) there for
    # width 8: opt-in on CPUs, where it cannot be tested on every kind.
    channels_last: bool | None = None
    workers: int = 0  # DataLoader worker processes cutting and augmenting batches (0: in the loop)
    # Patients replaced by new ones every epoch (a PatientStream passed to train(); 0: fixed training set).
    refresh_patients: int = 0
    # Stage-2 patches: "balanced" (every positive and as many negatives, as in stage 1) or "positive" (only the
    # patches with calcium: at inference the classifier's gate decides *whether*, the decoder only *where*).
    decoder_patches: str = "balanced"
    # Which stage-2 epoch is kept: "iom" (the paper: the highest mean validation IoM, which grows with larger
    # ROIs since it divides by the smaller area) or "loss" (the lowest validation decoder loss).
    select2: str = "iom"
    # Which stage-1 epoch is kept: "f1" (the highest validation F1 at the classifier threshold, ties by the lower
    # loss), "auc" (the highest validation AUC, free of the threshold) or "last" (the end of the schedule).  F1 at
    # 0.5 moves with the classifier's calibration, and run W50 kept by it an epoch 0.02 below its last on new
    # patients (docs/learning.md); one run, so the rule is a choice, not a new default.
    select1: str = "f1"
    # Weight of losses.decoder_detection_loss in stage 2 (0: the paper's loss): every patch with calcium must
    # draw an ROI inside its ROI_GT, none outside it.  A longer decoder fit lowered the paper's loss but drew
    # nothing on more calcified frames (docs/learning.md): the batch-pooled Dice does not reward small deposits.
    decoder_detection: float = 0.0
    # Write every epoch's weights as a model file, RUN/epochs/stage{S}_epoch{NNN}.safetensors with its card: for
    # scoring single epochs or averaging them afterwards (the checkpoint holds only the latest and the best).
    keep_epochs: bool = False

    def schedule(self) -> losses.RebalanceSchedule:
        return losses.RebalanceSchedule(self.rebalance_start, self.rebalance_step, self.rebalance_floor)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list
    best: dict
    val_metrics: dict
    seconds: float


# -- helpers ------------------------------------------------------------------------------------


def seed_everything(seed: int, stage: int = 0, epoch: int = 0) -> np.random.Generator:
    """Seed python, numpy's legacy generator and torch; return the epoch's numpy Generator."""
    import random

    key = [int(seed), int(stage), int(epoch)]
    random.seed(hash(tuple(key)))
    np.random.seed(np.random.SeedSequence(key).generate_state(1)[0])
    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] % (2 ** 63)))
    return np.random.default_rng(key)


def _state_tensors(prefix: str, module: torch.nn.Module) -> dict:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"opt.{idx}.{key}"] = t.detach().to("cpu").contiguous().clone()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, groups: dict) -> None:
    state: dict = {}
    for name, t in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def _prefixed(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def save_checkpoint(run_dir: Path, model, best_state: dict | None, opt, info: dict,
                    extra: dict | None = None) -> None:
    """Write the resumable state of a run atomically (one safetensors file; see :mod:`.checkpoint_io`).

    ``extra``: further named arrays kept with the state (the hard-negative scores)."""
    from .checkpoint_io import write_checkpoint

    tensors = _state_tensors("model", model)
    for k, v in (extra or {}).items():
        tensors[k] = torch.as_tensor(np.asarray(v)).contiguous().clone()
    if best_state is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
    opt_t, opt_groups = _optimizer_tensors(opt)
    tensors.update(opt_t)
    write_checkpoint(run_dir, tensors, dict(info, optimizer=opt_groups))


def epoch_model_path(run_dir, stage: int, epoch: int) -> Path:
    """Where ``keep_epochs`` writes the model of ``epoch`` (1-based) of ``stage``.

    Examples
    --------
    >>> epoch_model_path("run", 1, 7).as_posix()
    'run/epochs/stage1_epoch007.safetensors'
    """
    return Path(run_dir) / EPOCHS_DIR / f"stage{int(stage)}_epoch{int(epoch):03d}.safetensors"


def inference_metadata(config: TrainConfig) -> dict:
    """What a model card must say for inference to use the model as it was trained and validated."""
    return {"roi_gt": {"iterations": config.roi_iterations, "step_px": config.roi_step_px,
                       "min_deposit_fraction": config.min_deposit_fraction},
            "refinement": dict(config.refinement), "classifier_threshold": config.classifier_threshold,
            **({"roi_patches": int(config.roi_patches)} if config.roi_patches < 5 else {})}


def card_config(meta: dict, **overrides) -> TrainConfig:
    """The scoring settings of a model card (:func:`inference_metadata`'s inverse): refinement, classifier
    threshold, cine threshold and ROI patch count, as inference uses them; ``overrides`` replace any of them.

    >>> card_config({"classifier_threshold": 0.2, "cine_threshold": 0.1}).cine_threshold
    0.1
    >>> card_config({"roi_patches": 2}).roi_patches, card_config({}).roi_patches
    (2, 5)
    """
    return TrainConfig(**dict(dict(refinement=dict(meta.get("refinement") or {}) or TrainConfig().refinement,
                                   classifier_threshold=float(meta.get("classifier_threshold", CLASSIFIER_THRESHOLD)),
                                   cine_threshold=meta.get("cine_threshold"),
                                   roi_patches=int(meta.get("roi_patches", 5))), **overrides))


def save_epoch_model(run_dir: Path, model, row: dict, config: TrainConfig) -> Path:
    """Write the model as it ended the epoch of ``row`` (an ``epoch`` event) with a model card saying which.

    The weights are float32, those of the checkpoint written at the same time.  A stage-1 epoch's decoder
    is untrained unless the recipe trains it as an auxiliary head (``aux_weight`` > 0).  An existing file
    is replaced: a resumed run redoes the epoch it had not checkpointed, with the same result.
    """
    from CACIdentifierLib.modelio import save_model

    path = epoch_model_path(run_dir, row["stage"], row["epoch"])
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(inference_metadata(config), **{
        "training": {"kept_epoch": {"stage": row["stage"], "epoch": row["epoch"]}, "config": asdict(config),
                     "decoder_trained": row["stage"] == 2 or config.aux_weight > 0, "torch": torch.__version__},
        "metrics": {"validation": {k: v for k, v in row.items() if k.startswith("val_")}},
    })
    save_model(path, model, metadata, overwrite=True, dtype=None)
    return path


def _short(value, limit: int = 40) -> str:
    """``value`` as a short text for a message (long lists and dicts cut with an ellipsis).

    >>> _short(0.5), _short(list(range(30)))[-5:]
    ('0.5', '11...')
    """
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _changed(saved: dict, now: dict):
    """(name, saved value, new value) of each setting that differs, a nested one (architecture, refinement) by its
    dotted name, sorted.

    >>> _changed({"lr1": 1e-3, "refinement": {"sigma": 3.0, "min_island_px": 250}},
    ...          {"lr1": 1e-3, "refinement": {"sigma": 3.0, "min_island_px": 100}})
    [('refinement.min_island_px', 250, 100)]
    """
    out = []
    for k in now:
        a, b = saved.get(k), now[k]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [(f"{k}.{j}", a.get(j), b.get(j)) for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
        else:
            out.append((k, a, b))
    return sorted(out)


def _load_run_checkpoint(run_dir: Path, model, cfg_json: dict, resume: bool):
    """:func:`load_checkpoint`, where weights that do not fit because the network options changed (--width ...)
    are said to be a changed setting, not an unusable checkpoint (whose advice was to delete a good run)."""
    try:
        return load_checkpoint(run_dir, model)
    except CacError:
        plain = load_checkpoint(run_dir)  # the state alone (checked); a broken one raises its own message
        saved = json.loads(json.dumps(((plain[1].get("config") or {}).get("architecture") or {}) if plain else {}))
        now = json.loads(json.dumps(cfg_json.get("architecture") or {}))
        changed = sorted(f"architecture.{k}" for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if not saved or not changed:
            raise
        if resume:
            raise CacError(f"--resume: the checkpoint in {run_dir} was made with other settings "
                           f"({', '.join(changed)}); use the same options or another run folder") from None
        raise CacError(f"{run_dir} holds a checkpoint of an earlier run with another network ({', '.join(changed)}); "
                       "pass --overwrite to start it over, or choose another run folder") from None


def load_checkpoint(run_dir: Path, model=None) -> tuple[dict, dict] | None:
    """The run folder's checkpoint ``(tensors, state)``, checked against ``model``; None if there is none."""
    from .checkpoint_io import read_checkpoint

    return read_checkpoint(run_dir, model)


# -- validation ---------------------------------------------------------------------------------


@torch.no_grad()
def _decoder_val_loss(model, fs: dataset.FrameSet, config: TrainConfig, device, alpha: float) -> float:
    from CACIdentifierLib.device import autocast

    model.eval()
    ids = np.arange(fs.n_patches)
    total, n = 0.0, 0
    for s in range(0, len(ids), config.batch_size):
        b = dataset.make_batch(fs, ids[s:s + config.batch_size], with_dist=True, inputs=model_inputs(model))
        with autocast(device, enabled=config.amp):
            roi_logit = model.decode(model.encode(to_device(b["nc"], device), to_device(b["c"], device)))
        loss, _ = losses.decoder_loss(roi_logit, to_device(b["roi"], device), to_device(b["dist"], device), alpha,
                                      config.decoder_detection)
        total += float(loss) * len(b["label"])
        n += len(b["label"])
    return total / max(n, 1)


# -- training -----------------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_bn(model, fs: dataset.FrameSet, config: TrainConfig, device, stage: int, epoch: int,
                   n_patches: int = 256) -> None:
    """Re-estimate the BatchNorm statistics of the stage's modules on un-augmented training patches.

    During training BatchNorm normalises with each (balanced, augmented)
    batch's own statistics, while evaluation uses the running averages, which
    trail the fast-changing weights (momentum 0.1) and saw augmented inputs;
    on short runs the two disagree enough to flip validation predictions.
    Recomputing the statistics as a plain average over ``n_patches`` random
    training patches after each epoch ("precise BN") removes that gap.  Only
    the running statistics change (training itself uses batch statistics),
    and only the modules being trained: in stage 2 the frozen classifier's
    statistics stay as stage 1 left them.
    """
    from CACIdentifierLib.device import autocast

    modules = model.classifier_modules() if stage == 1 else [model.decoder]
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
        bn.train()
    rng = np.random.default_rng([int(config.seed), int(stage), int(epoch), 99])
    ids = rng.choice(fs.n_patches, size=min(n_patches, fs.n_patches), replace=False)
    bs = max(2, config.batch_size)
    for s in range(0, len(ids), bs):
        chunk = ids[s:s + bs]
        if len(chunk) < 2:
            break
        b = dataset.make_batch(fs, chunk, inputs=model_inputs(model))
        with autocast(device, enabled=config.amp):
            feats = model.encode(to_device(b["nc"], device), to_device(b["c"], device))
            if stage == 2:
                model.decode(feats)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)



class BatchSource(torch.utils.data.Dataset):
    """The batches of one epoch, cut and augmented in the loop or in DataLoader workers.

    Batch ``i`` draws its augmentation from ``default_rng([seed, stage, epoch, i])``, so
    the batches are the same whichever process cuts them and however many workers
    there are (0 workers: in the training loop).  Workers (``config.workers``) keep a
    GPU busy: cutting, augmenting and the boundary-loss distance maps are CPU work.
    """

    def __init__(self, fs: dataset.FrameSet, batches: list, config: TrainConfig, stage: int, epoch: int,
                 rank: int | None = None):
        self.fs, self.batches, self.config, self.stage, self.epoch = fs, batches, config, stage, epoch
        self.augment = dataset.Augment(display=config.display_augment) if config.augment else None
        # Data-parallel ranks cut their own shares of the batches: one more key, distinct draws per rank.
        self.key_tail = [] if rank is None else [int(rank)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([int(self.config.seed), int(self.stage), int(self.epoch), int(i),
                                     *self.key_tail])
        return dataset.make_batch(self.fs, self.batches[i], rng, self.augment, with_dist=(self.stage == 2),
                                  min_deposit_fraction=self.config.min_deposit_fraction,
                                  inputs=self.config.architecture.get("inputs", FRAME_ONLY))

    def iterate(self, device):
        if self.config.workers <= 0:
            return (self[i] for i in range(len(self)))
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        return iter(torch.utils.data.DataLoader(
            self, batch_size=None, shuffle=False, num_workers=int(self.config.workers),
            pin_memory=getattr(device, "type", str(device)) == "cuda", prefetch_factor=4,
            multiprocessing_context=ctx, collate_fn=_numpy_to_torch))


def _numpy_to_torch(b: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}


def _epoch_batches(fs: dataset.FrameSet, config: TrainConfig, rng, scores: np.ndarray | None,
                   stage: int = 1) -> list:
    negatives = stage == 1 or config.decoder_patches != "positive"
    weights = None
    if config.metal_negative_weight != 1.0:
        # Only the draw sees the weight (the stored scores stay the losses), unseen negatives included.
        weights = np.where(fs.metal.reshape(-1), config.metal_negative_weight, 1.0)
    ids = dataset.epoch_indices(fs.patch_labels, rng, balanced=config.balanced, samples=config.samples_per_epoch,
                                hard_scores=scores, hard_fraction=config.hard_negative_frac, negatives=negatives,
                                hard_weights=weights)
    bs = config.batch_size
    batches = [ids[s:s + bs] for s in range(0, len(ids), bs)]
    if len(batches) > 1 and len(batches[-1]) < bs:
        # Every step has the batch size: the epoch's last, partial batch changed shape every epoch (the
        # window and its positives vary) and the process grew with each new shape (a replay of training
        # steps: ~40 MB an epoch, flat with one shape; docs/learning.md).  It drops < one batch an epoch.
        batches = batches[:-1]
    return batches


def steps_per_epoch(fs: dataset.FrameSet, config: TrainConfig, stage: int = 1) -> int:
    """Optimiser steps of one epoch of ``stage`` (the same every epoch: the epoch's size depends only on the labels)."""
    return len(_epoch_batches(fs, config, np.random.default_rng(0), None, stage))


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at optimiser step ``step`` of ``total``.

    ``constant``: 1 (the paper).  ``cosine``: linear warm-up over ``warmup_frac``
    of the steps (Adam's early moments are noisy; large early steps unsettle
    BatchNorm), then a cosine decay to 1 % -- a function of the step alone, so a
    resumed run continues on the same curve without saving a scheduler.

    Examples
    --------
    >>> cfg = TrainConfig(lr_schedule="cosine", warmup_frac=0.1)
    >>> [round(lr_factor(s, 100, cfg), 3) for s in (0, 9, 10, 55, 99)]
    [0.1, 1.0, 1.0, 0.496, 0.01]
    """
    if config.lr_schedule == "constant" or total <= 0:
        return 1.0
    warm = int(round(config.warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm - 1)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def _run_epoch(model, opt, fs: dataset.FrameSet, config: TrainConfig, device, stage: int, epoch: int,
               progress: ProgressCallback, *, epochs: int = 1, base_lr: float | None = None,
               scores: np.ndarray | None = None, precision: MixedPrecision | None = None) -> float:
    from CACIdentifierLib.device import autocast

    rng = seed_everything(config.seed, stage, epoch)
    batches = _epoch_batches(fs, config, rng, scores, stage)
    alpha = config.schedule().alpha(epoch)
    joint = stage == 1 and config.aux_weight > 0
    model.train()
    total, n = 0.0, 0
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    ddp = distributed.current()
    precision = precision or MixedPrecision(device, config.amp)
    forward = _Forward(model, stage, joint)
    if ddp is None:
        source = BatchSource(fs, batches, config, stage, epoch)
    else:  # every rank takes its share of every global batch; DDP averages the gradients
        batches = ddp.usable(batches)
        source = BatchSource(fs, ddp.local(batches), config, stage, epoch, rank=ddp.rank)
        forward = ddp.wrap(forward, find_unused=(stage == 1 and not joint))
    for i, b in enumerate(source.iterate(device)):
        bids = source.batches[i]
        if base_lr is not None:
            f = lr_factor(epoch * len(batches) + i, epochs * len(batches), config)
            for g in opt.param_groups:
                g["lr"] = base_lr * f
        nc = to_device(b["nc"], device).contiguous(memory_format=fmt)
        c = to_device(b["c"], device).contiguous(memory_format=fmt)
        with autocast(device, enabled=config.amp):
            logit, roi_logit = forward(nc, c)
        if stage == 1:
            labels = to_device(b["label"], device)
            loss = losses.classification_loss(logit, labels)
            if scores is not None:
                with torch.no_grad():
                    per = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), labels,
                                                                               reduction="none")
                if ddp is None:
                    scores[np.asarray(bids)] = per.cpu().numpy()
                else:  # all ranks keep every patch's score: they draw the same next epoch
                    scores[np.asarray(batches[i])] = ddp.gather_scores(per, batches[i])
            if joint:
                loss = loss + config.aux_weight * losses.dense_roi_loss(roi_logit, to_device(b["roi"], device))
        else:
            loss, _ = losses.decoder_loss(roi_logit, to_device(b["roi"], device), to_device(b["dist"], device), alpha,
                                          config.decoder_detection)
        opt.zero_grad(set_to_none=True)
        if ddp is not None and len(bids) * ddp.world != len(batches[i]):
            precision.step(loss * ddp.loss_weight(len(bids), len(batches[i])), opt)  # unequal last shares
        else:
            precision.step(loss, opt)
        total += float(loss.detach()) * len(bids)
        n += len(bids)
        progress(i + 1, len(batches), f"stage {stage} epoch {epoch + 1}")
    if ddp is not None:
        total, n = ddp.sum([total, n])
    return total / max(n, 1)


class _Forward(torch.nn.Module):
    """One training step's forward pass as a module, so that DistributedDataParallel can wrap it.

    Stage 1: classifier logits (and, when joint, the decoder's ROI logits); stage 2:
    the decoder on the frozen encoder's features (no gradients through the encoder).
    """

    def __init__(self, model, stage: int, joint: bool):
        super().__init__()
        self.model, self.stage, self.joint = model, stage, joint

    def forward(self, nc, c):
        if self.stage == 1:
            feats = self.model.encode(nc, c)
            logit = self.model.classify_features(feats)
            return logit, (self.model.decode(feats) if self.joint else None)
        with torch.no_grad():
            feats = self.model.encode(nc, c)
        return None, self.model.decode(feats)


def _load_initial_weights(model, path) -> None:
    """Start from the weights of the model file ``path`` (safetensors; never unpickled)."""
    from CACIdentifierLib.modelio import load_model

    init, _ = load_model(path)
    # Block1's pool and the classifier's readout change no weight's shape: a model trained with
    # one setting can be fine-tuned with another.
    def shapes(arch: dict) -> dict:
        return {k: v for k, v in arch.items() if k not in ("block1_pool", "classifier_topk", "inputs", "in_channels")}

    a, b = init.arch_dict(), model.arch_dict()
    # Each of INPUTS adds channels to the one before it: an earlier kind of model can be widened.
    widen = (a["in_channels"] == IN_CHANNELS.get(a["inputs"], 1) and b["inputs"] in IN_CHANNELS
             and INPUTS.index(a["inputs"]) < INPUTS.index(b["inputs"]))
    if shapes(a) != shapes(b) or (a["in_channels"] != b["in_channels"] and not widen):
        raise CacError(f"--init {path} has architecture {a}, this run {b}; "
                       "use the same --width or another model")
    state = init.state_dict()
    if widen:
        # A model grows its new channels with Block1 weights at zero: the widened model computes
        # exactly what the narrower one did, and training decides what the new channels add.
        extra = b["in_channels"] - a["in_channels"]
        for head in ("head_nc", "head_c"):
            w = state[f"{head}.conv1.weight"]
            state[f"{head}.conv1.weight"] = torch.cat([w, w.new_zeros((w.shape[0], extra, *w.shape[2:]))], dim=1)
    model.load_state_dict(state)


def stage1_key(config: TrainConfig, epoch: int, f1: float | None, auc: float | None, cls_loss: float) -> tuple:
    """Sort key of a stage-1 epoch (the highest is kept; ``epoch`` 1-based), by ``config.select1``.

    Examples
    --------
    >>> epochs = [(0.746, 0.878, 0.42), (0.730, 0.899, 0.41), (0.731, 0.897, 0.43)]  # (F1, AUC, loss): run W50
    >>> [max(range(3), key=lambda e: stage1_key(TrainConfig(select1=r), e + 1, *epochs[e])) + 1
    ...  for r in ("f1", "auc", "last")]
    [1, 2, 3]
    """
    if config.select1 == "last":
        return (int(epoch),)
    score = auc if config.select1 == "auc" else f1
    return (float(score) if score is not None else -1.0, -float(cls_loss))


def stage2_key(config: TrainConfig, iom_mean: float | None, val_loss: float) -> tuple:
    """Sort key of a stage-2 epoch (the highest is kept), by ``config.select2``.

    Examples
    --------
    >>> epochs = [(0.563, 0.504), (0.561, 0.433)]  # (mean IoM, decoder loss) of the stream run's stage 2
    >>> [max(range(2), key=lambda e: stage2_key(TrainConfig(select2=r), *epochs[e])) + 1 for r in ("iom", "loss")]
    [1, 2]
    """
    if config.select2 == "loss":
        return (-float(val_loss),)
    return (iom_mean if iom_mean is not None else -1.0, -float(val_loss))


def _frame_keys(fs: dataset.FrameSet) -> list:
    """(acquisition, frame) of every frame: what identifies a frame across training windows."""
    return [[a, int(f)] for a, f in zip(fs.acquisition, fs.frame_index.tolist())]


def _unseen_score(config: TrainConfig) -> float:
    """Hard-negative score of a patch not drawn yet (``config.hard_negative_init``)."""
    return 1.0 if config.hard_negative_init == "one" else float("nan")


def _carry_scores(old_keys: list, scores: np.ndarray, new: dataset.FrameSet, unseen: float = 1.0) -> np.ndarray:
    """Hard-negative scores for a new training window: kept for the frames it shares with the old one
    (``old_keys``: :func:`_frame_keys` of the window ``scores`` belong to), ``unseen`` for new ones."""
    where = {(a, int(f)): i for i, (a, f) in enumerate(old_keys)}
    out = np.full(new.n_patches, unseen, np.float32)
    for j, key in enumerate(zip(new.acquisition, new.frame_index.tolist())):
        i = where.get(key)
        if i is not None:
            out[5 * j:5 * j + 5] = scores[5 * i:5 * i + 5]
    return out


def _finite(value) -> bool:
    """Whether ``value`` is a real, finite number (not a bool, a string, NaN or infinity)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def _whole(value) -> bool:
    """Whether ``value`` is an integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot work, with one line saying which (before any data is made).

    Parameters
    ----------
    config : TrainConfig
        The run's settings; each message names the field and its ``cac train`` option.

    Raises
    ------
    CacError
        For the first setting that is out of range: a NaN, infinite or negative
        number, a learning rate below 0, a width, batch or thread count below 1.
    """
    # A learning rate of 0 is allowed here (the weights stay: a test of the loop); cac train refuses it.
    for name, option in (("lr1", "--lr1"), ("lr2", "--lr2")):
        value = getattr(config, name)
        if not (_finite(value) and value >= 0):
            raise CacError(f"{name} ({option}) must be a finite number >= 0, e.g. 1e-3; got {value!r}")
    for name, option in (("epochs1", "--epochs1"), ("epochs2", "--epochs2")):
        value = getattr(config, name)
        if not (_whole(value) and value >= 0):
            raise CacError(f"{name} ({option}) must be a whole number >= 0, got {value!r}")
    if not (_whole(config.batch_size) and config.batch_size >= 1):
        raise CacError(f"batch_size (--batch-size) must be a whole number >= 1, got {config.batch_size!r}")
    if config.samples_per_epoch is not None and not (_whole(config.samples_per_epoch)
                                                     and config.samples_per_epoch >= 1):
        raise CacError("samples_per_epoch (--samples-per-epoch) must be a whole number >= 1 (leave it out for "
                       f"the balanced set's size), got {config.samples_per_epoch!r}")
    if config.num_threads is not None and not (_whole(config.num_threads) and config.num_threads >= 1):
        raise CacError(f"num_threads (--threads) must be a whole number >= 1 (leave it out for torch's default), "
                       f"got {config.num_threads!r}")
    if not (_whole(config.workers) and config.workers >= 0):
        raise CacError(f"workers (--workers) must be a whole number >= 0, got {config.workers!r}")
    if not (_whole(config.seed) and config.seed >= 0):
        raise CacError(f"seed (--seed) must be a whole number >= 0, got {config.seed!r}")
    width = dict(config.architecture or {}).get("width", 64)
    # Any width >= 1 builds (BatchNorm has no group size to divide); 64 is ResNet-18's.
    if not (_whole(width) and width >= 1):
        raise CacError(f"width (--width) must be a whole number >= 1 (ResNet-18: 64), got {width!r}")
    # weight_decay, warmup_frac, hard_negative_frac and the rebalance start/floor come from the recipe:
    # no option to name.
    for name, label in (("weight_decay", "weight_decay"), ("rebalance_step", "rebalance_step (--rebalance-step)")):
        value = getattr(config, name)
        if not (_finite(value) and value >= 0):
            raise CacError(f"{label} must be a finite number >= 0, got {value!r}")
    for name in ("warmup_frac", "hard_negative_frac", "rebalance_start", "rebalance_floor"):
        value = getattr(config, name)
        if not (_finite(value) and 0 <= value <= 1):
            raise CacError(f"{name} must be a share between 0 and 1, got {value!r}")
    if config.decoder_patches not in ("balanced", "positive"):
        raise CacError(f"decoder_patches must be 'balanced' or 'positive', got {config.decoder_patches!r}")
    if config.select1 not in ("f1", "auc", "last"):
        raise CacError(f"select1 must be 'f1', 'auc' or 'last', got {config.select1!r}")
    if config.select2 not in ("iom", "loss"):
        raise CacError(f"select2 must be 'iom' or 'loss', got {config.select2!r}")
    if not (config.decoder_detection >= 0 and np.isfinite(config.decoder_detection)):
        raise CacError(f"decoder_detection must be a finite number >= 0, got {config.decoder_detection!r}")
    if config.hard_negative_init not in ("one", "mean"):
        raise CacError(f"hard_negative_init must be 'one' or 'mean', got {config.hard_negative_init!r}")
    if not (config.aux_weight >= 0 and np.isfinite(config.aux_weight)):
        raise CacError(f"aux_weight (--aux-weight) must be a finite number >= 0, got {config.aux_weight!r}")
    if not (config.metal_negative_weight > 0 and np.isfinite(config.metal_negative_weight)):
        raise CacError(f"metal_negative_weight (--metal-negative-weight) must be a positive number, "
                       f"got {config.metal_negative_weight!r}")
    if not 0.0 <= config.display_augment <= 1.0:
        raise CacError(f"display_augment (--display-augment) is a probability in [0, 1], got {config.display_augment!r}")
    if config.metal_negative_weight != 1.0 and config.hard_negative_frac <= 0:
        raise CacError("metal_negative_weight (--metal-negative-weight) weighs the hard-negative draw: it needs "
                       "hard_negative_frac > 0 (the default recipe)")


def train(train_set: dataset.FrameSet | None, val_set: dataset.FrameSet | None, config: TrainConfig, run_dir, *,
          resume: bool = False, emit: Callable[[dict], None] | None = None,
          progress: ProgressCallback = no_progress,
          stream: Callable[[int], dataset.FrameSet] | None = None, restart: bool = False,
          source: dict | None = None) -> TrainResult:
    """Run both stages; checkpoints go to ``run_dir`` after every epoch.

    ``resume``: continue from ``run_dir``'s checkpoint (an error if there is
    none with the same configuration); without it an existing checkpoint is
    an error (pass resume, or use another folder) unless ``restart``
    (``--overwrite``): the earlier run's checkpoint, history and kept epochs
    are then deleted and the run starts over.  While it runs the folder
    is locked (``run.lock``): a second run on it is an error, not a silent
    exchange of checkpoints.

    ``stream``: training data that changes every epoch (e.g.
    :class:`~CACTrainerLib.phantom_pool.PatientStream`): ``stream(g)`` is the
    training set of epoch ``g``, counted over both stages (stage 2's first
    epoch is ``epochs1``); ``train_set`` is then ignored.  It must depend on
    ``g`` alone, so that a resumed run sees the data it would have seen.

    ``source``: what the run trains on (:func:`~CACTrainerLib.checkpoint_io.data_source`),
    recorded in the checkpoint; a resume on other data is refused (a stream
    has no other fingerprint of its data), and CAC Trainer reads it to offer
    a resume only where it would be accepted.
    """
    check_config(config)  # before the lock creates the folder: a bad setting leaves nothing behind
    if resume and restart:
        raise CacError("resume continues the run folder's checkpoint and restart discards it; choose one")
    if not distributed.is_main():  # rank 0 holds the lock for the whole data-parallel run
        return _train(train_set, val_set, config, Path(run_dir), resume, emit, progress, stream, restart, source)
    created = not Path(run_dir).exists()
    try:
        with folder_lock(run_dir, "training run"):
            if restart:
                clear_run(run_dir)
            return _train(train_set, val_set, config, Path(run_dir), resume, emit, progress, stream, restart,
                          source)
    except BaseException:
        if created:  # a run that failed before its first checkpoint (a bad --init) leaves no empty folder
            with contextlib.suppress(OSError):
                Path(run_dir).rmdir()
        raise


def _data_key(train_set, val_set) -> str:
    """A fingerprint of which acquisitions train and validate (their names and frame counts): a resumed run
    must see the same split."""
    import hashlib
    from collections import Counter

    def part(frames):
        return [] if frames is None else sorted(Counter(map(str, frames.acquisition)).items())

    text = json.dumps({"train": part(train_set), "val": part(val_set)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clear_run(run_dir) -> None:
    """Delete an earlier run's checkpoint, history and kept epochs from ``run_dir`` (nothing else in it)."""
    from .checkpoint_io import CHECKPOINT, CHECKPOINT_JSON

    run_dir = Path(run_dir)
    for name in (CHECKPOINT, CHECKPOINT_JSON, "history.json"):
        (run_dir / name).unlink(missing_ok=True)
    kept = run_dir / EPOCHS_DIR
    if kept.is_dir():
        for path in kept.glob("stage[12]_epoch[0-9][0-9][0-9]*"):
            path.unlink(missing_ok=True)


def _train(train_set, val_set, config: TrainConfig, run_dir: Path, resume: bool, emit, progress, stream,
           restart: bool = False, source: dict | None = None) -> TrainResult:
    """The body of :func:`train`, run under its lock."""
    from CACIdentifierLib.device import autocast_dtype, choose_device
    from CACIdentifierLib.network import ResUNet18

    emit = emit or (lambda event: None)
    main = distributed.is_main()  # in a data-parallel run only rank 0 reports and writes
    if not main:
        emit, progress = (lambda event: None), no_progress
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    device = choose_device(config.device)
    nhwc = device.type == "cuda" if config.channels_last is None else bool(config.channels_last)
    if nhwc and distributed.current() is not None and device.type != "cuda":
        nhwc = False  # DDP over gloo (CPU) crashed with NHWC parameters too (double free; torch 2.13)
    config = replace(config, channels_last=nhwc)
    if stream is None and (train_set is None or len(train_set) == 0):
        raise CacError("no training frames")
    if val_set is not None and len(val_set) == 0:
        val_set = None
    cfg_json = asdict(config)
    data_key = _data_key(train_set, val_set) if stream is None else None
    t_start = time.perf_counter()

    seed_everything(config.seed)
    model = ResUNet18(**config.architecture).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.init:
        _load_initial_weights(model, config.init)
    model = distributed.prepare_model(model)
    history: list = []
    stage, start_epoch = 1, 0
    best_state = None
    best = {"stage1": None, "stage2": None}
    # restart: the other ranks of a data-parallel run need not wait for rank 0's clear_run.
    ckpt = None if restart else _load_run_checkpoint(run_dir, model, cfg_json, resume)
    if ckpt is not None and not resume:
        raise CacError(f"{run_dir} holds a checkpoint of an earlier run; pass --resume to continue it, "
                       "--overwrite to start it over, or choose another run folder")
    if resume and ckpt is None:
        raise CacError(f"--resume: no checkpoint in {run_dir}; start without --resume")
    opt_tensors = opt_groups = None
    saved_scores = saved_keys = None
    if ckpt is not None:
        tensors, info = ckpt
        # The epoch counts may change on resume (extend or cut a run); everything else must match.
        free = ("device", "num_threads", "epochs1", "epochs2", "workers", "channels_last",  # speed, not the run
                "keep_epochs")
        # A setting added after the checkpoint was written had its default then.
        defaults = asdict(TrainConfig())
        saved = {k: info["config"].get(k, defaults.get(k)) for k in cfg_json if k not in free}
        now = {k: v for k, v in cfg_json.items() if k not in free}
        if saved != now:
            # The checkpoint's value is what to pass to continue (e.g. a run from before a recipe changed).
            said = ", ".join(f"{k}: {_short(a)} there, {_short(b)} now" for k, a, b in _changed(saved, now))
            raise CacError(f"--resume: the checkpoint in {run_dir} was made with other settings ({said}); "
                           "use the same options or another run folder")
        from .checkpoint_io import describe_sources, same_source

        if same_source(info.get("source"), source) is False:
            theirs, ours = describe_sources(info["source"], source)
            raise CacError(f"--resume: the checkpoint in {run_dir} was made on {theirs}, "
                           f"not on {ours}; use the same data or another run folder")
        if info.get("data") is not None and data_key is not None and info["data"] != data_key:
            # Another dataset, cross-validation mode or fold: resuming would train on held-out patients.
            raise CacError(f"--resume: the checkpoint in {run_dir} was made on other training and validation data "
                           "(dataset, cross-validation mode or fold changed); use the same ones or another run folder")
        model.load_state_dict(_prefixed(tensors, "model"))
        best_state = _prefixed(tensors, "best") or None
        history, best = info["history"], info["best"]
        stage, start_epoch = int(info["stage"]), int(info["epochs_done"])
        opt_tensors, opt_groups = tensors, info["optimizer"]
        if "hnm.scores" in tensors:
            saved_scores = tensors["hnm.scores"].numpy().copy()
            saved_keys = info.get("hnm_frames")  # the window they belong to, when training on a stream
        emit({"event": "resume", "stage": stage, "epoch": start_epoch})

    def window(st: int, epoch: int) -> int:  # the stream's epoch number, counted over both stages
        return epoch if st == 1 else config.epochs1 + epoch

    data_epoch = None
    if stream is not None:
        data_epoch = window(stage, start_epoch)
        train_set = stream(data_epoch)
        if len(train_set) == 0:
            raise CacError("no training frames")
    # Last classification loss of every training patch, for hard-negative mining (kept in checkpoints).
    hard_scores = None
    if config.hard_negative_frac > 0:
        hard_scores = np.full(train_set.n_patches, _unseen_score(config), np.float32)
        if saved_scores is not None and saved_keys is not None:
            hard_scores = _carry_scores(saved_keys, saved_scores, train_set, _unseen_score(config))
        elif saved_scores is not None and saved_scores.shape == hard_scores.shape:
            hard_scores = saved_scores

    emit({"event": "start", "device": str(device),
          "autocast": str(autocast_dtype(device, config.amp)).replace("torch.", ""),
          "train": train_set.summary(), "val": val_set.summary() if val_set is not None else None,
          "config": cfg_json, "resumed": ckpt is not None})

    precision = MixedPrecision(device, config.amp)  # one GradScaler (fp16 on CUDA) for the run
    for st in (1, 2):
        if st < stage:
            continue
        epochs = config.epochs1 if st == 1 else config.epochs2
        if st == 2:
            if stage == 1 or start_epoch == 0:
                # Stage 2 starts from stage 1's best weights, classifier frozen.
                if best_state is not None:
                    model.load_state_dict(best_state)
                best_state = None
            model.freeze_classifier(True)
        params = model.classifier_parameters() if st == 1 else model.decoder_parameters()
        if st == 1 and config.aux_weight > 0:
            params = params + model.decoder_parameters()  # joint: the decoder is the dense auxiliary head
        base_lr = config.lr1 if st == 1 else config.lr2
        if config.weight_decay > 0:
            opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=config.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=base_lr)
        first = start_epoch if st == stage else 0
        if st == stage and opt_tensors is not None and first > 0:
            _load_optimizer(opt, opt_tensors, opt_groups)
        for epoch in range(first, epochs):
            t0 = time.perf_counter()
            data_seconds = None
            if stream is not None and window(st, epoch) != data_epoch:
                data_epoch = window(st, epoch)
                old_keys = _frame_keys(train_set) if hard_scores is not None else None
                # Release the old window before the next is built: one window less at the peak (~2.6 GB for
                # 221 patients by the arrays' sizes, not measured; the allocator keeps the peak for the rest of the run).
                train_set = None
                train_set = stream(data_epoch)
                release_freed_memory()  # the old window's pages: the run's heap is never trimmed otherwise
                if hard_scores is not None:
                    hard_scores = _carry_scores(old_keys, hard_scores, train_set, _unseen_score(config))
                data_seconds = round(time.perf_counter() - t0, 3)
            if stream is not None and window(st, epoch) + 1 < config.epochs1 + config.epochs2:
                prefetch = getattr(stream, "prefetch", None)
                if prefetch is not None:  # the next window's new patients, generated while this epoch trains
                    prefetch(window(st, epoch) + 1)
            train_loss = _run_epoch(model, opt, train_set, config, device, st, epoch, progress,
                                    epochs=epochs, base_lr=base_lr,
                                    scores=hard_scores if st == 1 else None, precision=precision)
            recalibrate_bn(model, train_set, config, device, st, epoch)
            row = {"event": "epoch", "stage": st, "epoch": epoch + 1, "epochs": epochs,
                   "train_loss": train_loss, "val_loss": None, "val_f1": None, "val_iom": None}
            if st == 2:
                row["alpha"] = config.schedule().alpha(epoch)
            if data_seconds is not None:  # new patients generated for this epoch (part of "seconds")
                row["data_seconds"] = data_seconds
            improved = val_set is None
            if val_set is not None:
                ev = evaluate(model, val_set, config, device, decode=(st == 2))
                if st == 1:
                    # AUC too: the target measure, and free of the 0.5 threshold F1 depends on.
                    # ... and within each patch position, which knowing where calcium usually is cannot raise.
                    row.update(val_loss=ev["cls_loss"], val_f1=ev["f1"], val_precision=ev["precision"],
                               val_recall=ev["recall"], val_auc=ev["auc"],
                               val_auc_within_position=ev["auc_within_position"])
                    key = stage1_key(config, epoch + 1, ev["f1"], ev["auc"], ev["cls_loss"])
                else:
                    row.update(val_loss=_decoder_val_loss(model, val_set, config, device, row["alpha"]),
                               val_iom=ev["iom_mean"], val_iom_median=ev["iom_median"],
                               val_hd_mm=ev["hd_mm_median"], val_f1=ev["f1"],
                               val_decoder_sensitivity=ev.get("decoder_sensitivity"))
                    key = stage2_key(config, ev["iom_mean"], row["val_loss"])
                prev = best[f"stage{st}"]
                improved = prev is None or list(key) > list(prev["key"])
                if improved:
                    best[f"stage{st}"] = {"epoch": epoch + 1, "key": list(key), "metrics": {
                        k: v for k, v in ev.items() if k not in PER_ITEM_KEYS}}
            elif st in (1, 2):
                best[f"stage{st}"] = {"epoch": epoch + 1, "key": [], "metrics": {}}
            if improved:
                best_state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
            row["best"] = bool(improved)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            if main and config.keep_epochs:  # before the checkpoint: a resume redoes an epoch not checkpointed
                save_epoch_model(run_dir, model, row, config)
            if main:
                state = {"stage": st, "epochs_done": epoch + 1, "history": history, "best": best, "config": cfg_json,
                         "data": data_key, "source": source}
                if stream is not None and hard_scores is not None:
                    state["hnm_frames"] = _frame_keys(train_set)  # a resumed run starts in the next window
                save_checkpoint(run_dir, model, best_state, opt, state,
                                extra=None if hard_scores is None else {"hnm.scores": hard_scores})
            emit(row)
        emit({"event": "stage_done", "stage": st, "best": best[f"stage{st}"]})
        if st == 1 and main:
            save_checkpoint(run_dir, model, best_state, opt, {
                "stage": 2, "epochs_done": 0, "history": history, "best": best, "config": cfg_json, "data": data_key,
                "source": source})
        start_epoch = 0

    if best_state is not None:
        model.load_state_dict(best_state)
    model.freeze_classifier(False)
    model.eval()
    val_metrics = {}
    if val_set is not None:
        val_metrics = evaluate(model, val_set, config, device, decode=True)
    seconds = time.perf_counter() - t_start
    if main:
        with atomic_output(run_dir / "history.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps({"history": history, "best": best}, indent=1) + "\n")
    emit({"event": "done", "seconds": round(seconds, 2), "best": best,
          "val": {k: v for k, v in val_metrics.items() if k not in PER_ITEM_KEYS}})
    return TrainResult(model.to("cpu"), history, best, val_metrics, seconds)


def plot_curves(history: list, path, title: str = "") -> None:
    """Training curves (losses, validation F1, AUC and IoM per epoch) as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(st, metric, label) for st, metric, label in ((1, "val_f1", "val F1"), (2, "val_iom", "val IoM (mean)"))
              if any(r.get("stage") == st for r in history)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4), squeeze=False)
    for ax, (st, metric, label) in zip(axes[0], panels):
        rows = [r for r in history if r.get("stage") == st]
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [r["train_loss"] for r in rows], "-o", ms=3, label="train loss")
        if any(r.get("val_loss") is not None for r in rows):
            ax.plot(ep, [r.get("val_loss") for r in rows], "-o", ms=3, label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"stage {st}: " + ("classifier (BCE)" if st == 1 else "decoder (GDL/boundary)"))
        if any(r.get(metric) is not None for r in rows):
            ax2 = ax.twinx()
            ax2.plot(ep, [r.get(metric) for r in rows], "-s", color="tab:green", ms=3, label=label)
            if st == 1 and any(r.get("val_auc") is not None for r in rows):
                ax2.plot(ep, [r.get("val_auc") for r in rows], "-^", color="tab:purple", ms=3, label="val AUC")
                label = f"{label} / AUC"
            ax2.set_ylim(0, 1.02)
            ax2.set_ylabel(label)
            ax2.legend(loc="lower right")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
