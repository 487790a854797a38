"""Scoring a model on a FrameSet as inference would use it: patch classification and frame identification.

:func:`evaluate` is the validation of every training epoch, the cross-validation
folds' test, calibration's data and the benchmarks' scorer: the classifier's
probabilities (:func:`predict_patches`), patch precision, recall, F1, AUC and
loss; with ``decode``, each frame's ROI made as inference makes it
(:func:`frame_roi`: gated, stitched with max, refined, inside the exposed
field) and the paper's IoM and Hausdorff distance beside the measures that
cannot be gamed (ROI area and precision, frame sensitivity and specificity).
``config`` is a :class:`~CACTrainerLib.training.TrainConfig` (its ``amp``,
``batch_size``, ``classifier_threshold`` and ``refinement``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from CACIdentifierLib.background import model_inputs
from CACIdentifierLib.device import to_device

from . import dataset

# Keys of evaluate()'s result that hold one value per frame or patch (left out of summaries and JSON).
PER_ITEM_KEYS = ("frames", "probabilities", "frame_area_pct_field", "frame_pred_any", "frame_truth_any")


def _prf(y_true, y_pred) -> dict:
    from CACIdentifierLib.metrics import precision_recall_f1

    r = precision_recall_f1(np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool))
    if isinstance(r, dict):
        out = {k: (None if r.get(k) is None else float(r[k])) for k in ("precision", "recall", "f1")}
        out.update({k: int(r[k]) for k in ("tp", "fp", "fn", "tn") if k in r})
        return out
    p, rc, f = r[:3]
    return {"precision": float(p), "recall": float(rc), "f1": float(f)}




class PatchPredictions(NamedTuple):
    """What :func:`predict_patches` returns."""

    probs: np.ndarray  # (F*5,) classifier probabilities
    rois: np.ndarray | None  # (F*5, 256, 256) float16 ROI probabilities, with ``decode``
    features: np.ndarray | None  # (F*5, C) Block6 features averaged over each patch, with ``return_features``


@torch.no_grad()
def predict_patches(model, fs: dataset.FrameSet, device, amp: bool, batch_size: int = 32,
                    decode: bool = False, return_features: bool = False) -> PatchPredictions:
    """Classifier probabilities and, on request, ROI probabilities and pooled Block6 features.

    ``features`` are what the classifier reads (for ood.py), from the same encoder pass.
    """
    from CACIdentifierLib.device import autocast

    model.eval()
    ids = np.arange(fs.n_patches)
    probs = np.empty(len(ids), np.float32)
    rois = np.empty((len(ids), dataset.PATCH, dataset.PATCH), np.float16) if decode else None
    pooled = []
    for s in range(0, len(ids), batch_size):
        b = dataset.make_batch(fs, ids[s:s + batch_size], inputs=model_inputs(model))
        with autocast(device, enabled=amp):
            feats = model.encode(to_device(b["nc"], device), to_device(b["c"], device))
            logit = model.classify_features(feats)
            if decode:
                rois[s:s + batch_size] = torch.sigmoid(model.decode(feats).float())[:, 0].cpu().numpy()
        probs[s:s + batch_size] = torch.sigmoid(logit.float()).cpu().numpy()
        if return_features:
            pooled.append(feats["block6"].float().mean(dim=(2, 3)).cpu().numpy())
    features = None
    if return_features:
        features = np.concatenate(pooled) if pooled else np.zeros((0, 0), np.float32)
    return PatchPredictions(probs, rois, features)


def pooled_features(model, fs: dataset.FrameSet, device, amp: bool, batch_size: int = 32) -> np.ndarray:
    """(F*5, C) Block6 features averaged over each patch: what the classifier reads (for ood.py)."""
    return predict_patches(model, fs, device, amp, batch_size, return_features=True).features


def frame_roi(rois: np.ndarray, gate: np.ndarray, field: np.ndarray, refinement: dict) -> np.ndarray:
    """A frame's ROI as inference makes it: the five patches' ROI probabilities gated, stitched, refined, in the field.

    ``rois`` (5, 256, 256) ROI probabilities, ``gate`` (5,) bool classifier
    decisions, ``field`` (512, 512) bool exposed field.
    """
    from CACIdentifierLib import patches
    from CACIdentifierLib.refinement import refine

    gated = rois.astype(np.float32) * np.asarray(gate, bool)[:, None, None]
    return refine(patches.stitch(gated, dataset.FRAME, dataset.FRAME, mode="max"), **refinement) & field


def evaluate(model, fs: dataset.FrameSet, config, device, *, decode: bool = True,
             calibration: dict | None = None, predictions: PatchPredictions | None = None,
             frame_gate=None) -> dict:
    """Patch classification metrics and per-frame identification metrics on ``fs``.

    Identification follows inference: gated ROI probabilities, stitched with
    max, refined; IoM and Hausdorff distance (mm, where the spacing is
    known) against the frame's majority-vote calcium mask, for the frames
    where either mask is non-empty (both empty: undefined, skipped).
    ``detection`` is the frame-level sensitivity and specificity;
    ``decoder_sensitivity`` the share of calcified frames that get an ROI
    with every patch gated in (in the exposed field), the most that any
    classifier threshold can reach.
    ``calibration`` (a model card's) is applied to the classifier's
    probabilities before the threshold, as inference does; ``config.roi_patches``
    (a card's) keeps the ROI to each frame's most probable gated patches.
    ``predictions`` (an earlier :func:`predict_patches` of ``model`` on ``fs``,
    uncalibrated, with ROIs where ``decode``) skips the network, so that
    operating points can be compared on one pass; ``frame_gate`` (one bool
    per frame) withholds the ROI of the frames where it is False, for frame
    decisions beyond the patch threshold (benchmarks/frame_score.py); without
    it ``config.cine_threshold`` (a card's) gates each acquisition as
    inference gates a cine (:func:`CACIdentifierLib.temporal.cine_gate`).
    """
    from CACIdentifierLib import calibration as calib
    from CACIdentifierLib import metrics
    from CACIdentifierLib.field import exposed_field

    if predictions is None:
        predictions = predict_patches(model, fs, device, config.amp, config.batch_size, decode=decode)
    probs, rois, _ = predictions
    if len(probs) != fs.n_patches or (decode and rois is None):
        raise ValueError("predictions do not match the frames (or lack the ROIs that decode needs)")
    if calibration:
        probs = calib.apply(probs, calibration).astype(np.float32)
    if frame_gate is None and getattr(config, "cine_threshold", None) is not None:
        # The card's cine gate on the calibrated probabilities, as inference applies it (temporal.cine_gate):
        # each acquisition is a cine.
        from CACIdentifierLib.temporal import cine_gate

        frame_gate = cine_gate(probs.reshape(-1, 5).max(axis=1), config.cine_threshold, fs.acquisition)
    gate_frames = np.ones(len(fs), bool) if frame_gate is None else np.asarray(frame_gate, bool).reshape(-1)
    if gate_frames.size != len(fs):
        raise ValueError(f"frame_gate has {gate_frames.size} values for {len(fs)} frames")
    y = fs.patch_labels > 0.5
    pred = probs >= config.classifier_threshold
    # The patches that draw each frame's ROI: the gated ones, or only the most probable of them (a card's
    # roi_patches, refinement.most_probable_patches); the patch metrics stay the classifier's.
    from CACIdentifierLib.refinement import most_probable_patches

    drawn = most_probable_patches(probs.reshape(-1, 5), pred.reshape(-1, 5),
                                  getattr(config, "roi_patches", None)).reshape(-1)
    out = {"patches": int(y.size), "positives": int(y.sum())}
    out.update(_prf(y, pred))
    out["auc"] = metrics.roc_auc(y, probs)
    # The pooled AUC credits knowing where calcium usually is; within each patch position it cannot.
    out["auc_within_position"] = metrics.within_position_auc(y, probs)["mean"]
    out["probabilities"] = probs
    eps = 1e-7
    p = np.clip(probs, eps, 1 - eps)
    out["cls_loss"] = float(-np.mean(y * np.log(p) + (~y) * np.log(1 - p)))
    if not decode:
        return out
    frames = []
    areas, pred_any, truth_any = [], [], []
    decoder_hits = []  # per calcified frame: does the ungated ROI (every patch kept) exist?
    for f in range(len(fs)):
        sl = slice(5 * f, 5 * f + 5)
        field = exposed_field(fs.nc[f], margin_px=3)
        mask = frame_roi(rois[sl], drawn[sl] & gate_frames[f], field, config.refinement)
        truth = fs.calcium[f]
        sp = fs.spacing_mm[f]
        area = metrics.roi_area(mask, tuple(sp) if np.all(np.isfinite(sp)) else None, field)
        areas.append(area["area_pct_field"])
        pred_any.append(bool(mask.any()))
        truth_any.append(bool(truth.any()))
        if not mask.any() and not truth.any():
            continue
        iom = metrics.iom(mask, truth)
        # The same decoder without classifier gating, for the paired comparison of the CV report.
        ungated = frame_roi(rois[sl], np.ones(5, bool), np.ones_like(field), config.refinement)
        iom_ungated = metrics.iom(ungated, truth)
        if truth.any():
            decoder_hits.append(bool((ungated & field).any()))
        hd = None
        if np.all(np.isfinite(sp)) and mask.any() and truth.any():
            hd = metrics.hausdorff_mm(mask, truth, tuple(float(s) for s in sp))
        frames.append({"acquisition": fs.acquisition[f], "frame": int(fs.frame_index[f]),
                       "iom": None if iom is None or (isinstance(iom, float) and math.isnan(iom)) else float(iom),
                       "hd_mm": None if hd is None else float(hd),
                       "iom_ungated": None if iom_ungated is None else float(iom_ungated),
                       "roi_area_pct_field": area["area_pct_field"], "roi_area_mm2": area["area_mm2"],
                       "roi_precision": metrics.roi_precision(mask, fs.roi[f])})
    ioms = [fr["iom"] for fr in frames if fr["iom"] is not None]
    hds = [fr["hd_mm"] for fr in frames if fr["hd_mm"] is not None]
    out["frames"] = frames
    out["frame_area_pct_field"] = areas
    out["frame_pred_any"] = pred_any
    out["frame_truth_any"] = truth_any
    out["roi_area_pct_field_median"] = float(np.median(areas)) if areas else None
    precs = [fr["roi_precision"] for fr in frames if fr["roi_precision"] is not None]
    out["roi_precision_median"] = float(np.median(precs)) if precs else None
    out["detection"] = metrics.frame_detection(pred_any, truth_any)
    # The ceiling of the frame sensitivity that any classifier threshold can reach: the share of calcified
    # frames whose decoder draws an ROI when every patch is kept.  Frames missed within the ceiling are
    # the classifier gate's; those beyond it the decoder's (no threshold brings them back).
    out["decoder_sensitivity"] = float(np.mean(decoder_hits)) if decoder_hits else None
    out["decoder_frames_found"] = int(np.sum(decoder_hits))
    out["iom_mean"] = float(np.mean(ioms)) if ioms else None
    out["iom_median"] = float(np.median(ioms)) if ioms else None
    out["hd_mm_median"] = float(np.median(hds)) if hds else None
    return out
