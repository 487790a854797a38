"""Losses of the two training stages.

Stage 1 (classifier): binary cross-entropy on the CAC-presence logit
(:func:`classification_loss`, ``torch.nn.functional.binary_cross_entropy_with_logits``).

Stage 2 (decoder): the boundary loss of Kervadec et al., "Boundary loss for
highly unbalanced segmentation", Med Image Anal 67:101851 (2021), which the
paper uses for the ROI branch, combined -- as Kervadec et al. recommend and
as their reference implementation (github.com/LIVIAETS/boundary-loss) does --
with a regional loss, the generalized Dice loss (Sudre et al. 2017):

    total = alpha * GDL + (1 - alpha) * boundary

with ``alpha`` following the "rebalance" schedule of :class:`RebalanceSchedule`.

Conventions of the reference implementation that are reproduced here:

- :func:`signed_distance_map` is their ``one_hot2dist`` for the foreground
  class: ``edt(~m) * ~m - (edt(m) - 1) * m`` with
  ``scipy.ndimage.distance_transform_edt``.  Values are in *pixels* (or in
  the units of ``sampling`` when given): positive outside the target (the
  distance to the nearest target pixel), zero on the target's boundary pixels
  and negative deeper inside (minus the distance to the nearest background
  pixel, plus one).  An empty target gives an all-zero map, so a patch
  without calcium contributes nothing to the boundary loss (as in the
  reference, where "another class supervises that pixel").
- :func:`boundary_loss` is their ``SurfaceLoss`` on the foreground class:
  ``mean(probs * dist_maps)`` over batch and pixels.

Difference from the reference, on purpose: their ``GeneralizedDice`` adds
1e-10 to each class's target sum before the ``1/sum**2`` weight, so a class
absent from a sample's target gets a weight of 1e20 and the loss saturates
at 1 with no gradient as soon as a sliver of probability is predicted for it.
Patches without calcium are common here (most of a frame is calcium-free), so
:func:`generalized_dice_loss` (by default) pools the sums over the whole batch
(Sudre et al.'s formulation over all pixels of the batch) and gives a class
absent from the whole batch's target a weight of zero.  Then a calcium-free
patch still penalises false-positive probability through the foreground term
of the batch (whenever the batch holds a positive patch), an all-empty batch
reduces to the background Dice (~0 for an empty prediction, growing smoothly
with false positives) and the loss is always finite with a useful gradient.
``per_sample=True`` gives the reference's per-sample average, epsilon included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the batch (stage 1)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def signed_distance_map(mask, sampling=None) -> np.ndarray:
    """Signed distance map of a binary target, as ``one_hot2dist`` of the boundary-loss reference.

    Parameters
    ----------
    mask : (rows, cols) or (batch, rows, cols) or (batch, 1, rows, cols) bool array
        Target(s); a leading batch axis is processed sample by sample.
    sampling : float or sequence, optional
        Pixel spacing passed to ``distance_transform_edt``; ``None`` gives
        distances in pixels (what training uses: ROI_GT is defined in pixels).

    Returns
    -------
    dist : float32 array of the shape of ``mask``
        ``edt(~m) * ~m - (edt(m) - 1) * m``: positive outside (distance in
        pixels to the nearest target pixel), 0 on the target's boundary
        pixels, negative further inside; all zeros for an empty target.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim > 2:
        return np.stack([signed_distance_map(s, sampling) for s in m]).astype(np.float32)
    out = np.zeros(m.shape, dtype=np.float32)
    if m.any():
        neg = ~m
        out = (ndimage.distance_transform_edt(neg, sampling=sampling) * neg
               - (ndimage.distance_transform_edt(m, sampling=sampling) - 1) * m).astype(np.float32)
    return out


def boundary_loss(probs: torch.Tensor, dist_maps: torch.Tensor) -> torch.Tensor:
    """Boundary loss: ``mean(probs * dist_maps)`` (Kervadec et al. 2021, eq. 5 up to a constant).

    ``probs`` are foreground probabilities (after the sigmoid), ``dist_maps``
    the matching :func:`signed_distance_map` values (pixels).  Minimised by
    predicting exactly the target: probability on the inside (negative
    distances) lowers it, any probability outside raises it in proportion to
    the distance from the target.
    """
    probs = probs.float()
    dist_maps = dist_maps.to(probs.device, torch.float32).reshape(probs.shape)
    return (probs * dist_maps).mean()


def generalized_dice_loss(probs: torch.Tensor, target: torch.Tensor, *, per_sample: bool = False,
                          eps: float = 1e-10) -> torch.Tensor:
    """Generalized Dice loss over the two classes background / ROI (Sudre et al. 2017).

    ``GDL = 1 - 2 * sum_k w_k sum_i p_ki t_ki / sum_k w_k sum_i (p_ki + t_ki)``,
    ``w_k = 1 / (sum_i t_ki)**2``, with ``p_1 = probs``, ``p_0 = 1 - probs``
    and the same for the target.

    Parameters
    ----------
    probs : (B, 1, H, W) or (B, H, W) float tensor of foreground probabilities.
    target : tensor of the same number of elements, 0/1.
    per_sample : bool
        False (default): sums over the whole batch; a class absent from the
        batch's target gets weight 0 (see the module docstring for why).
        True: the reference implementation exactly: sums per sample with
        ``w = 1 / (sum + eps)**2``, the per-sample losses averaged.

    Returns
    -------
    loss : scalar tensor in [0, 1]; 0 for a perfect prediction.
    """
    p1 = probs.float().reshape(probs.shape[0], -1)
    t1 = target.to(p1.device, torch.float32).reshape(p1.shape)
    p = torch.stack([1 - p1, p1], dim=1)  # (B, 2, N)
    t = torch.stack([1 - t1, t1], dim=1)
    if per_sample:
        w = 1.0 / (t.sum(-1) + eps) ** 2  # (B, 2)
        inter = (w * (p * t).sum(-1)).sum(-1)
        union = (w * (p.sum(-1) + t.sum(-1))).sum(-1)
        return (1 - 2 * (inter + eps) / (union + eps)).mean()
    tsum = t.sum(dim=(0, 2))  # (2,)
    w = torch.where(tsum > 0, 1.0 / tsum.clamp_min(1.0) ** 2, torch.zeros_like(tsum))
    inter = (w * (p * t).sum(dim=(0, 2))).sum()
    union = (w * (p.sum(dim=(0, 2)) + tsum)).sum()
    return 1 - 2 * (inter + eps) / (union + eps)


@dataclass
class RebalanceSchedule:
    """Weight ``alpha`` of the regional loss in ``alpha * GDL + (1 - alpha) * boundary``.

    The "rebalance" strategy of Kervadec et al. (2021): training
    starts on the regional loss alone (``alpha = start = 1``), which gives a
    stable start, and shifts weight towards the boundary loss by ``step``
    (0.01) after every epoch, down to ``floor`` (0.01).  ``alpha(epoch)`` with
    the 0-based epoch index is ``max(floor, start - step * epoch)``.

    Note: the reference code's ``StealWeight(to_steal=0.01)`` scheduler moves
    0.01 from the regional to the boundary weight per epoch starting from the
    weights (1, 0.01) and keeps the regional weight at least 0.1; this class
    follows the convex form ``alpha, 1 - alpha`` with the 0.01 floor asked for
    here, which over the paper's 100 epochs reaches alpha = 0.01 at epoch 99.
    """

    start: float = 1.0
    step: float = 0.01
    floor: float = 0.01

    def alpha(self, epoch: int) -> float:
        return float(max(self.floor, self.start - self.step * int(epoch)))

    def __call__(self, epoch: int) -> float:
        return self.alpha(epoch)

    def combine(self, gdl: torch.Tensor, boundary: torch.Tensor, epoch: int) -> torch.Tensor:
        """``alpha * gdl + (1 - alpha) * boundary`` for this epoch."""
        a = self.alpha(epoch)
        return a * gdl + (1.0 - a) * boundary


def decoder_detection_loss(roi_logit: torch.Tensor, roi_target: torch.Tensor, *, k: int = 256) -> torch.Tensor:
    """Per-patch detection loss: an ROI inside ROI_GT where there is calcium, none outside it.

    Two terms on each patch's ``k`` most probable pixels (a multiple-instance
    reading of the ROI map; ``k`` = 256 px is within the 100-1,000 px smallest
    island that refinement keeps at the operating points and on the model card):

    - *recall*, for a patch whose ROI_GT is not empty: ``-log`` of the mean
      probability of its ``k`` most probable ROI_GT pixels (all of them when
      ROI_GT has fewer);
    - *false ROI*, for every patch: ``-log(1 - mean)`` of its ``k`` most
      probable pixels outside ROI_GT.

    Each term is averaged over the patches it applies to; the loss is their sum.
    Why: the generalized Dice loss is pooled over the batch, so a patch with a
    small, faint deposit weighs little against the large ROIs beside it; a
    decoder lowered that loss while drawing nothing on more calcified frames
    (``decoder_sensitivity``, docs/learning.md).  The recall term alone made the
    decoder draw across the whole gated patch (measured), hence the second.

    Examples
    --------
    >>> import torch
    >>> t = torch.zeros(2, 1, 32, 32); t[0, 0, 4:12, 4:12] = 1  # patch 1 has no calcium
    >>> found = torch.where(t > 0, 6.0, -6.0)
    >>> missed = torch.full_like(t, -6.0)
    >>> everywhere = torch.full_like(t, 6.0)
    >>> [round(float(decoder_detection_loss(x, t, k=16)), 2) for x in (found, missed, everywhere)]
    [0.0, 6.0, 6.0]
    """
    b = roi_logit.shape[0]
    probs = torch.sigmoid(roi_logit.float()).reshape(b, -1)
    inside = roi_target.reshape(b, -1).to(probs.device) > 0.5
    kk = min(int(k), probs.shape[1])
    ks = torch.arange(kk, device=probs.device)[None, :]

    def topk_mean(mask):  # mean of the k most probable pixels of ``mask`` (all of them when fewer)
        top = probs.masked_fill(~mask, -1.0).topk(kk, dim=1).values
        n = mask.sum(dim=1).clamp(max=kk)
        return (top.clamp_min(0.0) * (ks < n[:, None])).sum(dim=1) / n.clamp_min(1), n > 0

    p_in, has_in = topk_mean(inside)
    p_out, has_out = topk_mean(~inside)
    loss = probs.sum() * 0.0
    if bool(has_in.any()):
        loss = loss - torch.log(p_in[has_in].clamp_min(1e-6)).mean()
    if bool(has_out.any()):
        loss = loss - torch.log((1.0 - p_out[has_out]).clamp_min(1e-6)).mean()
    return loss


def decoder_loss(roi_logit: torch.Tensor, roi_target: torch.Tensor, dist_maps: torch.Tensor,
                 alpha: float, detection_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Stage-2 loss of a batch: ``alpha * GDL + (1 - alpha) * boundary`` on sigmoid probabilities,
    plus ``detection_weight`` times :func:`decoder_detection_loss` (0: the paper's loss).

    Returns the loss and its parts (floats) for logging.
    """
    probs = torch.sigmoid(roi_logit.float())
    gdl = generalized_dice_loss(probs, roi_target)
    bl = boundary_loss(probs, dist_maps)
    total = alpha * gdl + (1.0 - alpha) * bl
    parts = {"gdl": float(gdl.detach()), "boundary": float(bl.detach()), "alpha": float(alpha)}
    if detection_weight > 0:
        det = decoder_detection_loss(roi_logit, roi_target)
        total = total + detection_weight * det
        parts["detection"] = float(det.detach())
    return total, parts


def dense_roi_loss(roi_logit: torch.Tensor, roi_target: torch.Tensor, *, pos_weight: float = 4.0) -> torch.Tensor:
    """Auxiliary dense loss of the default recipe: pixel BCE plus soft Dice over the batch.

    The paper trains the encoder on one label per patch (BCE) and the decoder on a
    frozen encoder.  Supervising the encoder *through the decoder* with the ROI_GT map
    gives it 65,536 targets per patch instead of one and tells it *where* the calcium
    is, which is what a CPU budget of a few thousand steps needs ("concurrent use of
    multiple auxiliary tasks", the paper's outlook).  The pixel BCE (ROI pixels weighted
    ``pos_weight``: ROI_GT covers 0-5 % of a patch) keeps calcium-free patches empty;
    the Dice term, pooled over the batch so an empty batch is not undefined, rewards
    the overlap where there is calcium.

    Examples
    --------
    >>> import torch
    >>> t = torch.zeros(2, 1, 8, 8); t[0, 0, 2:5, 2:5] = 1
    >>> good = dense_roi_loss(torch.where(t > 0, 8.0, -8.0), t)
    >>> bad = dense_roi_loss(torch.zeros(2, 1, 8, 8), t)
    >>> bool(good < bad)
    True
    """
    logit = roi_logit.float()
    target = roi_target.float()
    weight = 1.0 + (pos_weight - 1.0) * target
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target, weight=weight)
    probs = torch.sigmoid(logit)
    inter = (probs * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (probs.sum() + target.sum() + 1.0)
    return bce + dice
