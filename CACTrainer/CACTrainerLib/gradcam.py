"""Grad-CAM of the CAC classifier (Selvaraju et al., IJCV 2020), from Block6 as in the paper.

For a patch pair, the CAC-presence logit ``y`` is differentiated with respect
to the feature maps ``A_k`` of a block (Block6 by default: 512 maps of 8x8
for a 256 input); each map is weighted by its spatially averaged gradient
``alpha_k = mean_ij dy/dA_k(i,j)``, and ``ReLU(sum_k alpha_k A_k)`` is
upsampled (bilinear) to the patch and scaled to [0, 1] by its maximum.  For
Block6, followed by global average pooling and the fc layer,
``alpha_k = w_k / (H W)``: Grad-CAM then equals the class activation map
``ReLU(sum_k w_k A_k)`` of Zhou et al. up to scale (checked in the tests).

The paper used it at the end of each classification epoch to check that the
classifier looks at the calcifications, not elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The encoder outputs on the classifier's path (ResUNet18.encode's keys but "block1", which joins both heads).
LAYERS = ("block6", "block5", "block4", "block3", "block2", "block2_nc", "block2_c", "block1_nc", "block1_c")


def _as_batch(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    while t.ndim < 4:
        t = t.unsqueeze(0)
    if t.shape[0] != 1:
        raise ValueError(f"grad_cam takes one patch pair, got a batch of {t.shape[0]}")
    return t


def grad_cam(model, nc, c, layer: str = "block6", return_probability: bool = False):
    """Grad-CAM heat map ``(H, W)`` float32 in [0, 1] of one patch pair.

    ``nc`` and ``c`` are the normalised non-contrast and contrast patches,
    ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` (arrays or tensors).
    ``layer`` is a key of :meth:`ResUNet18.encode` on the classifier's path
    (``block6`` default; ``block5``, ``block4``, ``block3``, ``block2``,
    ``block2_nc``, ``block2_c``, ``block1_nc``, ``block1_c``).  An all-zero
    map means no positive evidence.  With ``return_probability`` returns
    ``(cam, sigmoid(logit))``.  The model is run in eval mode; its mode and
    gradients are left as they were.
    """
    if layer == "block1":
        raise ValueError("block1 concatenates both heads outside the classifier path; use block1_nc or block1_c")
    device = next(model.parameters()).device
    nc_t, c_t = _as_batch(nc).to(device), _as_batch(c).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features = model.encode(nc_t, c_t)
            if layer not in features:
                raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(sorted(features))}")
            feat = features[layer]
            logit = model.classify_features(features)[0]
            (grad,) = torch.autograd.grad(logit, feat)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feat.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=nc_t.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = cam.max()
        cam = cam / peak if peak > 0 else torch.zeros_like(cam)
        out = cam.clamp_(0, 1).cpu().numpy().astype(np.float32)
        if return_probability:
            return out, float(torch.sigmoid(logit.detach()).item())
        return out
    finally:
        model.train(was_training)


def save_gradcam_png(
    path,
    nc_patch: np.ndarray,
    c_patch: np.ndarray,
    cam: np.ndarray,
    *,
    title: str | None = None,
    probability: float | None = None,
    overwrite: bool = False,
    alpha: float = 0.45,
    layer: str = "block6",
) -> None:
    """Write a PNG: the Grad-CAM map over the non-contrast and the contrast patch, side by side.

    Uses matplotlib's Agg canvas directly (no pyplot, no display) and
    ``fileutil.atomic_output`` (no overwrite without ``overwrite``).
    """
    from CACIdentifierLib.fileutil import atomic_output
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, img, name in zip(axes, (nc_patch, c_patch), ("non-contrast", "contrast")):
        ax.imshow(np.asarray(img), cmap="gray", interpolation="nearest")
        im = ax.imshow(np.asarray(cam), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
        ax.set_title(name)
        ax.set_axis_off()
    fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.02, label=f"Grad-CAM ({layer[:1].upper() + layer[1:]})")
    heading = title or "Grad-CAM"
    if probability is not None:
        heading += f" - P(CAC) = {probability:.3f}"
    fig.suptitle(heading)
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")
