"""Inference form of the double-head ResUNet-18 with its concatenations split by input.

Wherever the network convolves a concatenation (Block3 reads both heads' Block2 outputs; each
decoder stage reads its upsampled input and a skip), a convolution of the concatenation is the
sum of convolutions of its parts: ``conv([a, b], W) = conv(a, W_a) + conv(b, W_b)``.  Computing
it that way

* skips the copy that ``torch.cat`` makes of every part (memory traffic, a few ms per frame on a
  2-core CPU), and
* lets the parts that depend only on the contrast patch (the contrast head's share of Block3,
  of its shortcut, and of the decoder stages that read the contrast head's Block1 and Block2) be
  computed once per contrast frame: about half the non-contrast frames of a run share their
  contrast frame with another one.

The results equal the plain model's up to floating-point summation order (tested against
:class:`.network.ResUNet18` in fp32).  Built from a model whose BatchNorms are already folded
(:func:`.inference.fold_batchnorm`), on its device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_part(conv: nn.Conv2d, lo: int, hi: int, with_bias: bool):
    """The part of ``conv`` that reads input channels ``lo:hi`` (weights copied, contiguous)."""
    weight = conv.weight[:, lo:hi].contiguous(memory_format=torch.channels_last)
    bias = conv.bias if (with_bias and conv.bias is not None) else None
    stride, padding = conv.stride, conv.padding

    def apply(x: Tensor) -> Tensor:
        return F.conv2d(x, weight, bias, stride, padding)

    return apply


def max_pool_3x3_s2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 3, stride=2, padding=1)`` for even heights and widths, from strided views.

    Row by row then column by column: output ``i`` is the maximum of inputs ``2i-1, 2i, 2i+1``
    (``2i-1`` missing at the border, as with max_pool2d's padding).  A maximum is exact, so the
    result is the same to the bit; without the indices that max_pool2d computes on a CPU it
    took 2.6 ms instead of 3.2 ms for five patches' 64x128x128 bf16 maps (one core).
    """
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    odd = x[..., 1::2, :]
    rows = torch.maximum(x[..., 0::2, :], odd)
    rows[..., 1:, :] = torch.maximum(rows[..., 1:, :], odd[..., :-1, :])
    odd = rows[..., 1::2]
    out = torch.maximum(rows[..., 0::2], odd)
    out[..., 1:] = torch.maximum(out[..., 1:], odd[..., :-1])
    return out


def _head(head, x: Tensor) -> tuple[Tensor, Tensor]:
    """:class:`.network.Head`'s forward with :func:`max_pool_3x3_s2` for its max-pool."""
    b1 = head.relu(head.bn1(head.conv1(x)))
    return b1, head.block2(max_pool_3x3_s2(b1))


class _SplitStage:
    """A decoder stage (bilinear x2, concatenation, two conv-ReLU) with its first convolution split."""

    def __init__(self, block, widths: list[int]) -> None:
        edges = [0]
        for w in widths:
            edges.append(edges[-1] + w)
        if edges[-1] != block.conv1.in_channels:
            raise ValueError(f"parts {widths} do not add up to {block.conv1.in_channels} input channels")
        self.parts = [_conv_part(block.conv1, a, b, with_bias=(i == 0)) for i, (a, b) in enumerate(zip(edges, edges[1:]))]
        self.conv2 = block.conv2

    def __call__(self, x: Tensor, *skips: Tensor, precomputed: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = self.parts[0](x)
        for part, skip in zip(self.parts[1:], skips):
            y = y + part(skip)
        if precomputed is not None:
            y = y + precomputed
        return F.relu(self.conv2(F.relu(y)))


class SplitResUNet18:
    """Inference-only forward of a BatchNorm-folded :class:`.network.ResUNet18`.

    ``contrast_cache(c)`` computes everything that depends on the contrast patches alone;
    ``classify(nc, cache)`` returns the CAC logits and the features the decoder needs;
    ``decode(features, cache, keep)`` returns the ROI logits of the patches ``keep`` (bool mask).
    """

    def __init__(self, folded) -> None:
        m = folded
        w = m.width
        self.m = m
        b3 = m.block3[0]
        if any(not isinstance(mod, nn.Identity) for mod in (b3.bn1, b3.bn2)):
            raise ValueError("SplitResUNet18 needs a model with BatchNorm folded (inference.fold_batchnorm)")
        self.b3_conv1_nc = _conv_part(b3.conv1, 0, w, with_bias=False)
        self.b3_conv1_c = _conv_part(b3.conv1, w, 2 * w, with_bias=True)
        ds = b3.downsample[0]
        self.b3_ds_nc = _conv_part(ds, 0, w, with_bias=False)
        self.b3_ds_c = _conv_part(ds, w, 2 * w, with_bias=True)
        self.b3_conv2 = b3.conv2
        d = m.decoder
        d1, d2, d3, d4, _ = m.decoder_channels
        self.up5 = _SplitStage(d["up5"], [8 * w, 4 * w])
        self.up4 = _SplitStage(d["up4"], [d1, 2 * w])
        # up3 reads [x, Block3, Block2_nc, Block2_c]; the last part is precomputed per contrast frame.
        self.up3 = _SplitStage(d["up3"], [d2, w, w, w])
        self.up3_c = self.up3.parts.pop()
        # up2 reads [x, Block1_nc, Block1_c]; the last part is precomputed per contrast frame.
        self.up2 = _SplitStage(d["up2"], [d3, w, w])
        self.up2_c = self.up2.parts.pop()

    def contrast_cache(self, c: Tensor) -> dict:
        b1_c, b2_c = _head(self.m.head_c, c)
        return {"b1_c": b1_c, "b2_c": b2_c, "b3_conv1": self.b3_conv1_c(b2_c), "b3_ds": self.b3_ds_c(b2_c)}

    def classify(self, nc: Tensor, caches: list[dict]) -> tuple[Tensor, dict]:
        """CAC logits (B,) of the patch pairs; ``caches`` has one contrast cache per 5-patch frame."""
        b1_nc, b2_nc = _head(self.m.head_nc, nc)
        conv1_c = caches[0]["b3_conv1"] if len(caches) == 1 else torch.cat([k["b3_conv1"] for k in caches])
        ds_c = caches[0]["b3_ds"] if len(caches) == 1 else torch.cat([k["b3_ds"] for k in caches])
        out = self.b3_conv2(F.relu(self.b3_conv1_nc(b2_nc) + conv1_c))
        b3 = F.relu(out + self.b3_ds_nc(b2_nc) + ds_c)
        for block in list(self.m.block3)[1:]:
            b3 = block(b3)
        b4 = self.m.block4(b3)
        b5 = self.m.block5(b4)
        b6 = self.m.block6(b5)
        logit = self.m.classify_features({"block6": b6})
        return logit, {"b1_nc": b1_nc, "b2_nc": b2_nc, "b3": b3, "b4": b4, "b5": b5, "b6": b6}

    def decode(self, f: dict, caches: list[dict], keep: Tensor) -> Tensor:
        """ROI logits (K, 1, H, W) of the patches where ``keep`` is True."""
        for cache in caches:  # the contrast parts of up3 and up2, once per contrast frame
            if "up3" not in cache:
                cache["up3"] = self.up3_c(cache["b2_c"])
                cache["up2"] = self.up2_c(cache["b1_c"])
        up3_c = torch.cat([k["up3"] for k in caches]) if len(caches) > 1 else caches[0]["up3"]
        up2_c = torch.cat([k["up2"] for k in caches]) if len(caches) > 1 else caches[0]["up2"]
        if not bool(keep.all()):
            f = {name: value[keep] for name, value in f.items()}
            up3_c, up2_c = up3_c[keep], up2_c[keep]
        d = self.m.decoder
        x = self.up5(f["b6"], f["b5"])
        x = self.up4(x, f["b4"])
        x = self.up3(x, f["b3"], f["b2_nc"], precomputed=up3_c)
        x = self.up2(x, f["b1_nc"], precomputed=up2_c)
        x = d["up1"](x)
        return d["out"](x)
