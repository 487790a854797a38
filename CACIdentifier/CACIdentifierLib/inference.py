"""Identification of CAC regions of interest in a cine: the paper's Steps 1-3 for every non-contrast frame.

For each non-contrast frame ``k`` paired (by :mod:`.sync`) with contrast frame ``j``:

1. both frames are normalised and cut into the five overlapping 256x256 patches
   (:mod:`.patches`);
2. the double-head classifier scores each patch pair (Step 1);
3. the U-Net-like decoder runs only on the patches the classifier calls positive
   (classifier gating, paper Fig. 3: the ROI of a negative patch is zero, so it
   need not be computed), the patch ROI probabilities are stitched back to the
   frame (Step 2);
4. the frame ROI is refined: small islands removed, Gaussian, threshold (Step 3).

Frames are processed in batches (``batch_frames`` frames = 5x as many patch
pairs per forward pass), grouped by their contrast frame so that everything that
depends on the contrast patch alone (its head, and its shares of the convolutions
that read concatenations: :mod:`.splitnet`) runs once, with the weights cast to
the reduced precision that
:func:`.device.autocast_dtype` picks (bf16 on CPUs with AMX or AVX512-BF16,
where it is about twice as fast as fp32; the agreement is measured by
``benchmarks/bench_identify.py``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from . import refinement
from .cine import Cine
from .errors import CacError
from .ood import frame_scores, ood_warning
from .progress import ProgressCallback, no_progress


@dataclass
class IdentifyResult:
    """What :func:`identify` found.

    Attributes
    ----------
    frames : list of int
        The non-contrast frames analysed (0-based), in order.
    contrast_frames : list of int
        The contrast frame paired with each of ``frames``.
    probabilities : ndarray (len(frames),)
        Frame-level CAC probability: the highest patch probability of the frame.
    patch_probabilities : ndarray (len(frames), 5)
        Classifier probability of each patch pair (patch order of :mod:`.patches`).
    roi : ndarray of bool (n_frames, rows, columns)
        The refined ROI of every frame of the cine (all False for frames not analysed).
    roi_area_mm2 : ndarray (len(frames),)
        ROI area per analysed frame in mm^2, NaN when the spacing is unknown.
    sync : SyncResult
        The synchronization used (onset, period, phase, pairs).
    timings : dict
        Wall-clock seconds spent in each stage ("sync", "network", "refinement", "total"; the
        stages add up to at most "total"); "worker_seconds" holds the network and refinement
        times summed over parallel workers (more than wall time when frames run at once).
    """

    frames: list[int]
    contrast_frames: list[int]
    probabilities: np.ndarray
    patch_probabilities: np.ndarray
    roi: np.ndarray
    roi_area_mm2: np.ndarray
    sync: object
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    exposed_field: np.ndarray | None = None  # (rows, columns) bool: where X-rays reach the detector
    roi_area_pct_field: np.ndarray | None = None  # (len(frames),) ROI area, % of the exposed field
    static_spots: dict = field(default_factory=dict)  # frame -> [(row, col)]: centres of ROIs removed as static
    ood_scores: np.ndarray | None = None  # (len(frames),) activation score (ood.py); None without statistics
    ood_warning: str | None = None  # one line when the cine lies outside the model's training data


def conv_bn_pairs(model, *example_inputs) -> list:
    """(Conv2d, BatchNorm2d) pairs where the BatchNorm reads the convolution's output directly.

    Found by running ``model`` once on ``example_inputs`` (default: two 32x32 patches of
    ``model.in_channels`` channels, a ResUNet18's ``(nc, c)``) with hooks that see which tensor
    each layer produces and reads: what the computation does, not how its layers are named.
    """
    import torch
    from torch import nn

    if not example_inputs:
        x = torch.zeros(1, model.in_channels, 32, 32)
        example_inputs = (x, x)
    produced, pairs, hooks = {}, [], []

    def after_conv(module, inputs, output):
        produced[id(output)] = (module, output)  # the tensor is kept so that its id stays unique

    def before_bn(module, inputs):
        conv, output = produced.get(id(inputs[0]), (None, None))
        if output is inputs[0]:
            pairs.append((conv, module))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def fold_batchnorm(model, *example_inputs):
    """An inference copy of ``model`` with every BatchNorm folded into the convolution before it.

    In eval mode BN is an affine map per channel, so ``bn(conv(x))`` equals one convolution with
    scaled weights and a bias: one pass less over every activation map (memory-bound on a CPU).
    The pairs come from :func:`conv_bn_pairs`; the folded convolution takes the conv's place and
    an ``nn.Identity`` the BatchNorm's.  The original model is not modified.
    """
    import copy

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    place = {id(child): (parent, name) for parent in folded.modules() for name, child in parent.named_children()}
    for conv, bn in conv_bn_pairs(folded, *example_inputs):
        for module, replacement in ((conv, fuse_conv_bn_eval(conv, bn)), (bn, nn.Identity())):
            parent, name = place[id(module)]
            setattr(parent, name, replacement)
    return folded


def inference_model(model, device, dtype=None):
    """The copy of ``model`` that inference runs: BatchNorm folded, on ``device``, weights in ``dtype``.

    Casting the weights once to bf16 (instead of autocast, which casts every weight at every call)
    made the encoder faster (docs/identify.md gives the figure); channels_last lets oneDNN pick
    its fastest convolution kernels.  The original model is not modified.
    """
    import torch

    folded = fold_batchnorm(model)
    return folded.to(device, dtype=dtype or torch.float32, memory_format=torch.channels_last)


def _refinement_parameters(metadata: dict, overrides: dict) -> dict:
    params = dict(refinement.DEFAULTS)
    params.update(metadata.get("refinement", {}))
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def check_batching(batch_frames=None, workers=None) -> None:
    """Refuse fewer than one frame per forward pass or fewer than one worker (None: the default).

    Each setting is named alone: "workers (None)" meant nothing to a ``--batch-frames 0`` user.
    """
    if batch_frames is not None and int(batch_frames) < 1:
        raise CacError(f"--batch-frames {batch_frames} is not valid; give at least 1 frame per forward pass")
    if workers is not None and int(workers) < 1:
        raise CacError(f"workers {workers} is not valid; give at least 1")


def identify(
    cine: Cine,
    model,
    metadata: dict,
    sync=None,
    *,
    device: str = "auto",
    batch_frames: int = 1,
    onset: int | None = None,
    onset_guard: int | None = None,
    min_island_px: int | None = None,
    sigma: float | None = None,
    threshold: float | None = None,
    classifier_threshold: float | None = None,
    roi_patches: int | None = None,
    use_autocast: bool = True,
    temporal: bool = False,
    static_filter: bool = True,
    cine_gate: bool = True,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> IdentifyResult:
    """Find CAC ROIs on the non-contrast frames of ``cine``.

    Parameters
    ----------
    cine : Cine
        The angiography run.
    model, metadata
        A ``ResUNet18`` and its metadata, as returned by :func:`.modelio.load_model`.
    sync : SyncResult, optional
        A synchronization to reuse; computed with :func:`.sync.synchronize_cine` if omitted.
    device : {"auto", "cpu", "cuda", "mps"}
    batch_frames : int
        Frames per forward pass (5 patch pairs each).  One frame per pass was the
        fastest per frame on a 2-core CPU (activations stay in cache); larger
        batches pay off on a GPU.
    onset : int, optional
        Manual contrast onset frame (overrides detection) when ``sync`` is not given.
    onset_guard : int, optional
        Frames just before a detected onset that are not analysed, when ``sync`` is not
        given (default :data:`.sync.ONSET_GUARD_FRAMES`; see :func:`.sync.synchronize`).
    min_island_px, sigma, threshold
        Refinement overrides (default: the model's metadata, else :data:`.refinement.DEFAULTS`).
    classifier_threshold : float, optional
        Patch probability above which a patch is called positive (default: metadata, else 0.5).
    roi_patches : int, optional
        At most this many of a frame's positive patches, the most probable, draw its ROI
        (:func:`.refinement.most_probable_patches`; default: the card's ``roi_patches``, else all 5).
    temporal : bool
        Keep only ROIs that recur at the same cardiac phase in another beat
        (:func:`.temporal.temporal_filter`); off by default (see docs/identify.md).
    static_filter : bool
        Remove ROI components on dark spots that stay on the same pixels through the run (detector
        defects, markers) in a run whose heartbeat synchronization found: coronary calcium moves with the heart
        (:func:`.static_structures.remove_static`; ``parameters`` say how many were removed, or why the
        run was not judged).  False keeps them.
    cine_gate : bool
        Apply the model card's ``cine_threshold`` where it has one: no ROI on any frame of a cine whose
        mean frame probability lies below it (:func:`.temporal.cine_gate`; ``parameters`` then say
        ``cine_gate_withheld``).  False shows each frame's own ROIs.
    use_autocast : bool
        Run in the device's reduced precision (bf16/fp16, see :func:`.device.autocast_dtype`);
        False runs in fp32.
    workers : int, optional
        Frames processed at once, each on ``threads // workers`` torch threads (default: 2 on a
        CPU with at least 2 threads, else 1).  ``timings["network"]`` and ``["refinement"]`` are
        wall time (the loop's, split in proportion to the workers' times), so they fit in
        ``["total"]``; ``["worker_seconds"]`` has the sums over workers.
    progress : callable, optional
        ``progress(done, total, message)``; may raise ``progress.Cancelled``.
    """
    import torch

    from .device import autocast_dtype, choose_device
    from .network import CLASSIFIER_THRESHOLD
    from .patches import PATCH_SIZE, extract_patches, normalize_frame, prepare_frame, restore_mask, stitch
    from .refinement import ROI_PATCHES, most_probable_patches, refine
    from .splitnet import SplitResUNet18

    progress = progress or no_progress
    t_start = time.perf_counter()
    check_batching(batch_frames, workers)
    # Before synchronization and the network: a bad --sigma/--min-island/--threshold costs nothing.
    refinement.check_settings(**_refinement_parameters(
        metadata, dict(min_island_px=min_island_px, sigma=sigma, threshold=threshold)))
    if cine.n_frames < 2:
        raise CacError("the cine has a single frame; identification needs a run with non-contrast and contrast frames")
    # Before synchronization: a device that is not there fails before the slow work and its warnings.
    dev = choose_device(device)

    if sync is None:
        from .sync import synchronize_cine

        progress(0, 1, "synchronizing")
        sync = synchronize_cine(cine, onset=onset, onset_guard=onset_guard)
    t_sync = time.perf_counter()
    pairs = [(int(a), int(b)) for a, b in sync.pairs]
    if not pairs:
        raise CacError(
            "no non-contrast frame was found before the contrast onset; "
            "check the cine or give the onset frame with --onset"
        )

    refine_params = _refinement_parameters(
        metadata, dict(min_island_px=min_island_px, sigma=sigma, threshold=threshold)
    )
    cls_thr = classifier_threshold if classifier_threshold is not None else metadata.get("classifier_threshold", CLASSIFIER_THRESHOLD)
    roi_k = int(roi_patches if roi_patches is not None else metadata.get("roi_patches", ROI_PATCHES))
    if not 1 <= roi_k <= ROI_PATCHES:
        raise CacError(f"roi_patches {roi_k} must be 1-{ROI_PATCHES} (the patches that may draw a frame's ROI)")
    # Temperature (and Platt bias) fitted on held-out data (calibration.py); 1 and 0 for uncalibrated models.
    temperature = float((metadata.get("calibration") or {}).get("temperature", 1.0))
    bias = float((metadata.get("calibration") or {}).get("bias", 0.0))
    # Held-out activation statistics of the model's domain (ood.py); absent in older cards.
    feature_stats = metadata.get("feature_statistics")

    dtype = autocast_dtype(dev, use_autocast) or torch.float32
    # Concatenations split by input, contrast-only parts computed once per contrast frame (splitnet).
    net = SplitResUNet18(inference_model(model, dev, dtype))
    n = len(pairs)
    frames_nc = [p[0] for p in pairs]
    frames_c = [p[1] for p in pairs]
    patch_probs = np.zeros((n, 5), dtype=np.float32)
    ood_scores = np.full(n, np.nan) if feature_stats else None
    roi = np.zeros((cine.n_frames, cine.rows, cine.columns), dtype=bool)

    spacing = cine.spacing_mm
    background = None
    from .background import (
        FRAME_RESIDUAL_AND_VESSELS,
        cine_background,
        model_inputs,
        reads_background,
        with_residual,
        with_vessels,
    )

    inputs = model_inputs(model)
    if reads_background(inputs):
        # The static background of the analysed non-contrast frames, as in training (dataset.py).
        background = extract_patches(cine_background(cine.frames, frames_nc, spacing))[:, None]

    def frame_arrays(index: int) -> np.ndarray:
        frame, _, _ = prepare_frame(cine.frames[index], spacing)
        patches = extract_patches(normalize_frame(frame))[:, None]
        return patches if background is None else with_residual(patches, background)

    def tensor(patches: np.ndarray):
        return torch.from_numpy(patches).to(dev, dtype=dtype, memory_format=torch.channels_last)

    def contrast_patches(c: np.ndarray):
        if inputs == FRAME_RESIDUAL_AND_VESSELS:  # zeros under the contrast head (background.with_vessels)
            c = with_vessels(c, c)[1]
        return tensor(c)

    def non_contrast_patches(k: int, contrast: dict):
        nc = frame_arrays(frames_nc[k])
        if inputs == FRAME_RESIDUAL_AND_VESSELS:  # the paired contrast frame's residual under this head
            nc = with_vessels(nc, contrast[frames_c[k]])[0]
        return tensor(nc)

    # Pairs are taken in the order of their contrast frame, and a task computes the contrast head
    # (Block1-Block2 of five patches) once per contrast frame it holds: about half the pairs share
    # one.  One frame per pass (CPU): a task is all the pairs of one contrast frame; several frames
    # per pass (GPU): a task is one pass of ``batch_frames`` consecutive pairs.
    order = sorted(range(n), key=lambda k: (frames_c[k], frames_nc[k]))
    if batch_frames == 1:
        by_contrast: dict[int, list[int]] = {}
        for k in order:
            by_contrast.setdefault(frames_c[k], []).append(k)
        tasks = list(by_contrast.values())
    else:
        tasks = [order[i : i + batch_frames] for i in range(0, n, batch_frames)]

    def run_task(members):
        t0 = time.perf_counter()
        out = []
        with torch.inference_mode():
            # Each contrast frame prepared once per task: for its head and for the vessels of its pairs.
            contrast = {f_c: frame_arrays(f_c) for f_c in dict.fromkeys(frames_c[k] for k in members)}
            caches = {f_c: net.contrast_cache(contrast_patches(c)) for f_c, c in contrast.items()}
            for start in range(0, len(members), batch_frames):
                batch = members[start : start + batch_frames]
                nc_t = torch.cat([non_contrast_patches(k, contrast) for k in batch])
                pair_caches = [caches[frames_c[k]] for k in batch]
                logit, features = net.classify(nc_t, pair_caches)
                cls_prob = torch.sigmoid(logit.float() / temperature + bias)
                positive = cls_prob >= cls_thr
                if roi_k < ROI_PATCHES:  # the frame's decision stays; its most probable patches draw the ROI
                    positive = torch.from_numpy(most_probable_patches(
                        cls_prob.float().cpu().numpy().reshape(-1, ROI_PATCHES),
                        positive.cpu().numpy().reshape(-1, ROI_PATCHES), roi_k).reshape(-1)).to(positive.device)
                roi_prob = torch.zeros((nc_t.shape[0], PATCH_SIZE, PATCH_SIZE), device=dev)
                if bool(positive.any()):
                    # Gating: the decoder runs only where the classifier says CAC.
                    roi_prob[positive] = torch.sigmoid(net.decode(features, pair_caches, positive).float())[:, 0]
                if ood_scores is not None:
                    pooled = features["block6"].float().mean(dim=(2, 3)).cpu().numpy()
                    ood_scores[batch] = frame_scores(pooled, feature_stats)
                out.append((batch, cls_prob.cpu().numpy().reshape(-1, 5),
                            roi_prob.cpu().numpy().reshape(-1, 5, PATCH_SIZE, PATCH_SIZE)))
        t1 = time.perf_counter()
        masks = {}
        for batch, cls_np, roi_np in out:
            for i, k in enumerate(batch):
                patch_probs[k] = cls_np[i]
                if cls_np[i].max() >= cls_thr:
                    masks[k] = refine(stitch(roi_np[i]), **refine_params)
        return members, masks, t1 - t0, time.perf_counter() - t1

    if workers is None:
        # Two frames at a time, each on half the cores: on a 2-core CPU that beat one frame on both
        # cores (docs/identify.md; small convolutions scale poorly over threads).
        workers = 2 if dev.type == "cpu" and torch.get_num_threads() >= 2 and len(tasks) > 1 else 1
    threads_before = torch.get_num_threads()
    if workers > 1 and dev.type == "cpu":
        torch.set_num_threads(max(1, threads_before // workers))
    t_net = 0.0
    t_ref = 0.0
    done = 0
    t_loop = time.perf_counter()
    progress(0, n, "identifying")
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(run_task, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    members, masks, dt_net, dt_ref = future.result()
                    for k, mask512 in masks.items():
                        roi[frames_nc[k]] = restore_mask(mask512, cine.rows, cine.columns)
                    t_net += dt_net
                    t_ref += dt_ref
                    done += len(members)
                    progress(done, n, f"frame {frames_nc[members[-1]]} ({done}/{n})")
            except BaseException:
                for future in futures:  # cancelled or failed: stop what has not started
                    future.cancel()
                raise
    finally:
        torch.set_num_threads(threads_before)
    t_loop = time.perf_counter() - t_loop

    # No ROI in the collimated border: nothing there can be calcium (field.py).
    from .field import exposed_field

    field_mask = exposed_field(cine.frames)
    for f in set(frames_nc):
        roi[f] &= field_mask
    # No ROI on a spot that never moves: coronary calcium moves with the heart (static_structures.py).
    static_removed, static_note, static_spots = {}, None, {}
    if static_filter:
        from .static_structures import filter_cine

        # filter_cine returns a new array when it removes anything, so ``roi`` still holds what was there.
        kept, static_removed, static_note = filter_cine(roi, frames_nc, cine, sync, field_mask)
        for f in static_removed:
            gone, n_gone = ndi.label(roi[f] & ~kept[f])
            static_spots[f] = [tuple(round(float(v), 1) for v in ndi.center_of_mass(gone == k))
                               for k in range(1, n_gone + 1)]
        roi = kept
    if temporal and getattr(sync, "phase", None) is not None:
        from .temporal import temporal_filter

        roi = temporal_filter(roi, frames_nc, np.asarray(sync.phase, float))
    probabilities = patch_probs.max(axis=1) if n else np.zeros(0, np.float32)
    # The cine's evidence (temporal.py): a card chosen with `cac calibrate --cine-gate` withholds every
    # ROI of a cine whose frames, on average, say calcium less than its cine threshold.
    from .temporal import cine_evidence

    evidence = cine_evidence(probabilities)
    cine_thr = metadata.get("cine_threshold") if cine_gate else None
    withheld = cine_thr is not None and n > 0 and evidence < float(cine_thr)
    if withheld:
        for f in set(frames_nc):
            roi[f] = False
    field_px = max(int(field_mask.sum()), 1)
    area_pct = np.array([100.0 * roi[f].sum() / field_px for f in frames_nc], dtype=float)
    if spacing is not None:
        pixel_area = float(spacing[0]) * float(spacing[1])
        areas = np.array([roi[f].sum() * pixel_area for f in frames_nc], dtype=float)
    else:
        areas = np.full(n, np.nan)
    t_end = time.perf_counter()
    # Workers run at once, so their summed times can exceed the wall time (network 7.7 s in a 6.0 s
    # total): the stages report the loop's wall time split in their proportion (unchanged with one worker).
    scale = min(1.0, t_loop / (t_net + t_ref)) if t_net + t_ref > 0 else 1.0
    timings = {
        "sync": round(t_sync - t_start, 4),
        "network": round(t_net * scale, 4),
        "refinement": round(t_ref * scale, 4),
        "total": round(t_end - t_start, 4),
        "frames": n,
        "seconds_per_frame": round(t_loop / max(n, 1), 4),
        "workers": int(workers),
        "device": str(dev),
        "worker_seconds": {"network": round(t_net, 4), "refinement": round(t_ref, 4)},
    }
    params = dict(refine_params, classifier_threshold=float(cls_thr), roi_patches=roi_k, device=str(dev),
                  temporal=bool(temporal), static_filter=bool(static_filter),
                  static_rois_removed=int(sum(static_removed.values())),
                  static_frames=sorted(int(f) for f in static_removed),
                  static_note=static_note,
                  temperature=temperature, calibration_bias=bias, cine_evidence=round(float(evidence), 4),
                  cine_threshold=None if cine_thr is None else float(cine_thr), cine_gate_withheld=bool(withheld))
    return IdentifyResult(
        frames=frames_nc,
        contrast_frames=frames_c,
        probabilities=probabilities,
        patch_probabilities=patch_probs,
        roi=roi,
        roi_area_mm2=areas,
        sync=sync,
        timings=timings,
        parameters=params,
        exposed_field=field_mask,
        roi_area_pct_field=area_pct,
        static_spots=static_spots,
        ood_scores=ood_scores,
        ood_warning=ood_warning(ood_scores, feature_stats) if ood_scores is not None else None,
    )
