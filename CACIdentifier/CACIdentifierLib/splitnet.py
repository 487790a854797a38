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
:class:`.network.ResUNet18` in fp32, also with other widths and depths).  Built from a model whose
BatchNorms are already folded (:func:`.inference.fold_batchnorm`), on its device and dtype.

Nothing here restates the architecture: the wiring (which features the tail and each decoder
stage concatenate, which come from the contrast patch alone) is read from the tables of
:mod:`.network`, the channels of every part from one probe run of the model, and the stages from
its modules, so a change of width, depth or decoder channels needs no change here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .network import CONTRAST_FEATURES, DECODER_SKIPS, TAIL_INPUTS, TAIL_STAGES


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
    is faster (docs/identify.md).
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


def _pool_of(head):
    """:func:`max_pool_3x3_s2` where the head's pool is the 3x3 stride-2 max-pool it equals, else the pool."""
    pool = head.maxpool
    settings = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode) if isinstance(
        pool, nn.MaxPool2d) else None
    return max_pool_3x3_s2 if settings in ((3, 2, 1, 1, False), ((3, 3), (2, 2), (1, 1), (1, 1), False)) else pool


def _check_folded(module: nn.Module) -> None:
    if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        raise ValueError("SplitResUNet18 needs a model with BatchNorm folded (inference.fold_batchnorm)")


def _split_conv(conv: nn.Conv2d, widths: list[int], bias_part: int) -> list:
    """``conv`` as one convolution per input part of ``widths`` channels; the bias goes with one part."""
    edges = [0]
    for width in widths:
        edges.append(edges[-1] + width)
    if edges[-1] != conv.in_channels:
        raise ValueError(f"parts {widths} do not add up to {conv.in_channels} input channels")
    return [_conv_part(conv, a, b, with_bias=(i == bias_part)) for i, (a, b) in enumerate(zip(edges, edges[1:]))]


class _SplitBlock:
    """A folded :class:`.network.BasicBlock` whose input is a concatenation, its convolutions split by part.

    The first convolution and the projection shortcut both read the block's input; the parts that
    read contrast features are computed once per contrast frame (:meth:`contrast_parts`).
    """

    def __init__(self, block, widths: list[int], contrast: list[bool]) -> None:
        shortcut = list(block.downsample.children()) if block.downsample is not None else []
        if not shortcut or not isinstance(shortcut[0], nn.Conv2d):
            raise ValueError("a block reading a concatenation needs a projection shortcut to be split")
        if not all(isinstance(m, nn.Identity) for m in shortcut[1:]):  # its BatchNorm, folded
            raise ValueError("SplitResUNet18 needs a model with BatchNorm folded (inference.fold_batchnorm)")
        bias_part = contrast.index(True) if any(contrast) else 0  # as the hand-written form had it
        self.block, self.contrast = block, contrast
        self.conv1 = _split_conv(block.conv1, widths, bias_part)
        self.shortcut = _split_conv(shortcut[0], widths, bias_part)

    def contrast_parts(self, parts: list[Tensor | None]) -> dict:
        return {
            "conv1": [conv(x) for conv, x, c in zip(self.conv1, parts, self.contrast) if c],
            "shortcut": [conv(x) for conv, x, c in zip(self.shortcut, parts, self.contrast) if c],
        }

    def __call__(self, parts: list[Tensor | None], cached: dict) -> Tensor:
        b = self.block
        y = _sum([conv(x) for conv, x, c in zip(self.conv1, parts, self.contrast) if not c] + cached["conv1"])
        out = b.bn2(b.conv2(b.relu(b.bn1(y))))
        shortcut = [conv(x) for conv, x, c in zip(self.shortcut, parts, self.contrast) if not c]
        for term in shortcut + cached["shortcut"]:
            out = out + term
        return b.relu(out)


def _sum(terms: list[Tensor]) -> Tensor:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class _SplitStage:
    """A decoder stage (bilinear x2, concatenation, two conv-ReLU) with its first convolution split.

    ``skips`` names the features the stage concatenates to its upsampled input (from
    :data:`.network.DECODER_SKIPS`); the parts that read contrast features are computed once per
    contrast frame (:meth:`contrast_parts`).
    """

    def __init__(self, block, skips: tuple, channels: dict) -> None:
        skip_widths = [channels[s] for s in skips]
        widths = [block.conv1.in_channels - sum(skip_widths), *skip_widths]
        parts = _split_conv(block.conv1, widths, bias_part=0)
        self.block, self.first = block, parts[0]
        self.skips = [(s, part) for s, part in zip(skips, parts[1:]) if s not in CONTRAST_FEATURES]
        self.contrast = [(s, part) for s, part in zip(skips, parts[1:]) if s in CONTRAST_FEATURES]

    def contrast_parts(self, features: dict) -> list[Tensor]:
        return [part(features[s]) for s, part in self.contrast]

    def __call__(self, x: Tensor, features: dict, precomputed: list[Tensor]) -> Tensor:
        b = self.block
        y = self.first(b.upsample(x))
        for name, part in self.skips:
            y = y + part(features[name])
        for term in precomputed:
            y = y + term
        return b.relu(b.bn2(b.conv2(b.relu(b.bn1(y)))))


class SplitResUNet18:
    """Inference-only forward of a BatchNorm-folded :class:`.network.ResUNet18`.

    ``contrast_cache(c)`` computes everything that depends on the contrast patches alone;
    ``classify(nc, cache)`` returns the CAC logits and the features the decoder needs;
    ``decode(features, cache, keep)`` returns the ROI logits of the patches ``keep`` (bool mask).
    """

    def __init__(self, folded) -> None:
        _check_folded(folded)
        m = self.m = folded
        self.pool_nc, self.pool_c = _pool_of(m.head_nc), _pool_of(m.head_c)
        channels = self._channels(m)
        # The tail: its first block reads the concatenation of TAIL_INPUTS, split by part.
        first_stage = getattr(m, TAIL_STAGES[0])
        first_block, *rest = first_stage.children()
        self.tail_first = _SplitBlock(first_block, [channels[s] for s in TAIL_INPUTS],
                                      [s in CONTRAST_FEATURES for s in TAIL_INPUTS])
        self.first_stage_rest = rest
        self.stages = [(name, _SplitStage(m.decoder[name], skips, channels) if skips else m.decoder[name])
                       for name, skips in DECODER_SKIPS.items()]

    @staticmethod
    def _channels(m) -> dict[str, int]:
        """Channels of every feature of ``m.encode``, from one run on a small patch pair."""
        p = next(m.parameters())
        x = torch.zeros(1, m.in_channels, 32, 32, device=p.device, dtype=p.dtype)
        with torch.inference_mode():
            return {name: int(v.shape[1]) for name, v in m.encode(x, x).items()}

    def contrast_cache(self, c: Tensor) -> dict:
        b1_c, b2_c = self.m.head_c(c, pool=self.pool_c)
        features = {"block1_c": b1_c, "block2_c": b2_c}
        parts = [features.get(s) for s in TAIL_INPUTS]
        return {"features": features, "tail": self.tail_first.contrast_parts(parts)}

    @staticmethod
    def _joined(caches: list[dict], get) -> list[Tensor]:
        """Per-frame contrast terms, concatenated over the frames of a batch (one cache per 5-patch frame)."""
        if len(caches) == 1:
            return get(caches[0])
        return [torch.cat(terms) for terms in zip(*(get(k) for k in caches))]

    def classify(self, nc: Tensor, caches: list[dict]) -> tuple[Tensor, dict]:
        """CAC logits (B,) of the patch pairs; ``caches`` has one contrast cache per 5-patch frame."""
        b1_nc, b2_nc = self.m.head_nc(nc, pool=self.pool_nc)
        features = {"block1_nc": b1_nc, "block2_nc": b2_nc}
        cached = {key: self._joined(caches, lambda k, key=key: k["tail"][key]) for key in ("conv1", "shortcut")}
        x = self.tail_first([features.get(s) for s in TAIL_INPUTS], cached)
        for module in self.first_stage_rest:
            x = module(x)
        features[TAIL_STAGES[0]] = x
        for name in TAIL_STAGES[1:]:
            features[name] = x = getattr(self.m, name)(x)
        return self.m.classify_features(features), features

    def decode(self, features: dict, caches: list[dict], keep: Tensor) -> Tensor:
        """ROI logits (K, 1, H, W) of the patches where ``keep`` is True."""
        for cache in caches:  # the decoder's contrast parts, once per contrast frame
            if "decoder" not in cache:
                cache["decoder"] = {name: stage.contrast_parts(cache["features"])
                                    for name, stage in self.stages if isinstance(stage, _SplitStage)}
        if not bool(keep.all()):
            features = {name: value[keep] for name, value in features.items()}
        x = features[TAIL_STAGES[-1]]
        for name, stage in self.stages:
            if isinstance(stage, _SplitStage):
                precomputed = self._joined(caches, lambda k, name=name: k["decoder"][name])
                if not bool(keep.all()):
                    precomputed = [term[keep] for term in precomputed]
                x = stage(x, features, precomputed)
            else:
                x = stage(x)
        return self.m.decoder["out"](x)
