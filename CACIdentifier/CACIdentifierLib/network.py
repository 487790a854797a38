"""The double-head ResUNet-18 of De Rose et al. (2025), hand-written in torch.

Architecture (paper, "Double-head ResUNet-18 architecture" and Fig. 3), for a
pair of 256x256 patches - non-contrast ``nc`` and contrast-enhanced ``c``:

Heads (one per input, same layout, separate weights)
    Block1: 7x7 conv stride 2 (64 ch), BN, ReLU - 128x128.  As in ResNet,
    Block1 ends with a 3x3 stride-2 max-pool (64x64); the decoder's skip
    connection is taken *before* the pool (full 128x128 detail), the pool is
    applied on the way to Block2.
    Block2: a residual BasicBlock (two 3x3 conv, BN, ReLU, identity
    shortcut), 64 ch at 64x64.
Tail (shared)
    The two Block2 outputs are concatenated (128 ch, 64x64) and go through
    Block3..Block6, each "two 2D conv layers, BN, ReLU with residual
    connection" = one ResNet BasicBlock stage: Block3 64 ch stride 1 (1x1
    projection shortcut 128->64), Block4 128 ch stride 2, Block5 256 ch
    stride 2, Block6 512 ch stride 2 (8x8) - ResNet-18's 64-128-256-512
    progression.  ``blocks_per_stage`` BasicBlocks per stage: 1 is the
    paper's literal "two conv layers" per block (default), 2 is
    torchvision's ResNet-18 depth.
    Global average pooling and a fully connected layer give the CAC-presence
    logit.
    Option ``block1_pool=False`` (not in the paper) drops Block1's max-pool:
    Block2 and Block3 work at H/2 and Block6 ends at H/16, so a small deposit
    (10-40 px, 1-2 px wide after the stride and the pool) keeps twice the
    width in every later block, for about 4x the compute after Block1.  The
    weights have the same shapes, so a model trained with the pool can be
    fine-tuned without it.
    Option ``classifier_topk=k`` (not in the paper) reads the logit out as a
    multiple-instance classifier: the fc is applied at each Block6 location
    (it is linear, so the mean of those location logits *is* the average-pooled
    logit) and the k largest are averaged.  A deposit that lights up a few of
    the 64 locations is then not diluted by the rest of the patch; k = 0
    (default) is the paper's global average pooling.  No weight changes shape.
    Option ``inputs="frame+residual"`` (not in the paper; ``in_channels`` 2)
    says what the two input channels of each head are: the frame and the
    frame minus the cine's static background (:mod:`.background`).  The
    network itself treats them as any two channels; the data pipeline reads
    ``inputs`` to build them.  ``inputs="frame+residual+vessels"`` (``in_channels``
    3) adds the paired contrast patch's residual under the non-contrast head
    (zeros under the contrast head), :func:`.background.with_vessels`.
Decoder (U-Net-like)
    Bilinear x2 upsampling, concatenation with the skip, two 3x3 conv + BN +
    ReLU per stage: 8->16 (skip Block5), 16->32 (Block4), 32->64 (Block3 and
    the concatenated Block2 outputs), 64->128 (the two Block1 outputs),
    128->256 (no skip); then a 1x1 conv gives the ROI logit map (1 ch,
    256x256).  Without Block1's pool every stage before ``up2`` works at
    twice the size, and ``up2`` concatenates the Block1 skips without
    upsampling.

Training is two-stage (paper): stage 1 trains heads + tail + fc
(:meth:`ResUNet18.classifier_parameters`), stage 2 trains the decoder
(:meth:`ResUNet18.decoder_parameters`) with the classifier frozen
(:meth:`ResUNet18.freeze_classifier` - no gradient into the encoder, encoder
BN kept in eval mode).  At inference the classifier gates the ROI
(:func:`gated_roi`, paper Fig. 3): patches called negative get an empty ROI.

Style and initialisation follow torchvision's ``resnet.py`` (kaiming normal
fan-out for conv, BN weight 1 and bias 0).  FLOPs are reported as
2 x multiply-accumulates (MACs) of the conv and linear layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .background import FRAME_ONLY, IN_CHANNELS, INPUTS

# Patch probability at or above which the classifier calls a patch positive (gates its ROI).
CLASSIFIER_THRESHOLD = 0.5
DEFAULT_DECODER_CHANNELS = (128, 64, 32, 16, 16)  # light: see docs/network.md (speed)
ENCODER_BLOCKS = ("block1", "block2", "block3", "block4", "block5", "block6")
# The wiring, as data: ResUNet18 runs it and the inference fast path (splitnet) derives its own
# forward from it, so an architecture change is made once.  Feature names are encode()'s keys.
TAIL_INPUTS = ("block2_nc", "block2_c")  # concatenated, the input of the shared tail
TAIL_STAGES = ("block3", "block4", "block5", "block6")
CONTRAST_FEATURES = ("block1_c", "block2_c")  # computed from the contrast patch alone
# What each decoder stage concatenates to its upsampled input, in order ("out" is the 1x1 conv).
DECODER_SKIPS = {
    "up5": ("block5",),
    "up4": ("block4",),
    "up3": ("block3", "block2_nc", "block2_c"),
    "up2": ("block1_nc", "block1_c"),
    "up1": (),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding (torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (torchvision)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet's basic residual block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU (torchvision)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def make_stage(inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first one strides and projects (1x1 conv + BN) when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class Head(nn.Module):
    """One input head: Block1 (7x7/2 conv, BN, ReLU; 3x3/2 max-pool) and Block2 (BasicBlock stage).

    ``pool=False`` replaces the max-pool by the identity (Block2 at H/2 instead of H/4).
    """

    def __init__(self, in_channels: int, width: int, blocks_per_stage: int, pool: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        self.block2 = make_stage(width, width, blocks_per_stage)

    def forward(self, x: Tensor, pool=None) -> tuple[Tensor, Tensor]:
        """Block1 (before the pool) and Block2 outputs; ``pool`` replaces ``self.maxpool`` (same result)."""
        b1 = self.relu(self.bn1(self.conv1(x)))  # Block1 output before the pool: decoder skip (H/2)
        b2 = self.block2((pool or self.maxpool)(b1))  # H/4 (H/2 without the pool)
        return b1, b2


class DecoderBlock(nn.Module):
    """U-Net up step: bilinear x2 (``scale`` 1: none), concatenate the skip, (conv3x3-BN-ReLU) x 2."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = int(scale)
        self.conv1 = conv3x3(in_channels + skip_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def upsample(self, x: Tensor) -> Tensor:
        """The stage's bilinear upsampling (none where ``scale`` is 1); splitnet's fast path calls it too."""
        if self.scale == 1:
            return x
        return F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.upsample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class ResUNet18(nn.Module):
    """Double-head ResUNet-18: CAC-presence classifier + U-Net-like ROI decoder.

    Parameters
    ----------
    in_channels : channels of each input patch (1: grey X-ray).
    width : channels of Block1/Block2/Block3 (64 in ResNet-18); Block4..6 use
        2x, 4x, 8x.
    blocks_per_stage : BasicBlocks per residual block (1: the paper's two
        conv layers per block; 2: torchvision ResNet-18 depth).
    decoder_channels : output channels of the five decoder stages (at 16, 32,
        64, 128, 256 pixels for a 256 input).
    zero_init_residual : zero the last BN of each residual block (torchvision option).
    block1_pool : Block1's 3x3 stride-2 max-pool (ResNet, the paper).  False keeps
        Block2..Block6 at twice the resolution (Block6 at H/16) for small deposits,
        at about 4x the compute after Block1; the weights keep their shapes.
    classifier_topk : 0 (global average pooling) or the number of Block6 locations whose logits
        are averaged.
    inputs : ``"frame"`` (``in_channels`` channels of the frame), ``"frame+residual"``
        (``in_channels`` 2: the frame and its residual, :func:`.background.with_residual`) or
        ``"frame+residual+vessels"`` (``in_channels`` 3, :func:`.background.with_vessels`).

    ``forward(nc, c)`` takes two ``(B, in_channels, 256, 256)`` float tensors
    and returns ``(cls_logit (B,), roi_logit (B, 1, 256, 256))``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        blocks_per_stage: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        zero_init_residual: bool = False,
        block1_pool: bool = True,
        classifier_topk: int = 0,
        inputs: str = FRAME_ONLY,
    ) -> None:
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {decoder_channels}")
        if blocks_per_stage < 1 or width < 1 or in_channels < 1:
            raise ValueError("in_channels, width and blocks_per_stage must be positive")
        if isinstance(classifier_topk, bool) or int(classifier_topk) != classifier_topk or classifier_topk < 0:
            raise ValueError(f"classifier_topk must be 0 (global average) or a positive integer, got {classifier_topk!r}")
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
        if inputs in IN_CHANNELS and in_channels != IN_CHANNELS[inputs]:
            raise ValueError(f"inputs {inputs!r} needs in_channels {IN_CHANNELS[inputs]}, got {in_channels}")
        self.in_channels = int(in_channels)
        self.inputs = str(inputs)
        self.width = int(width)
        self.blocks_per_stage = int(blocks_per_stage)
        self.decoder_channels = decoder_channels
        self.zero_init_residual = bool(zero_init_residual)
        self.block1_pool = bool(block1_pool)
        self.classifier_topk = int(classifier_topk)
        self._classifier_frozen = False
        w = self.width

        # Step 1: double-head ResNet-18 classifier.
        self.head_nc = Head(in_channels, w, blocks_per_stage, pool=self.block1_pool)
        self.head_c = Head(in_channels, w, blocks_per_stage, pool=self.block1_pool)
        self.block3 = make_stage(2 * w, w, blocks_per_stage, stride=1)
        self.block4 = make_stage(w, 2 * w, blocks_per_stage, stride=2)
        self.block5 = make_stage(2 * w, 4 * w, blocks_per_stage, stride=2)
        self.block6 = make_stage(4 * w, 8 * w, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * w, 1)

        # Step 2: U-Net-like decoder.
        d1, d2, d3, d4, d5 = decoder_channels
        self.decoder = nn.ModuleDict(
            {
                "up5": DecoderBlock(8 * w, 4 * w, d1),  # 8 -> 16, skip Block5
                "up4": DecoderBlock(d1, 2 * w, d2),  # 16 -> 32, skip Block4
                "up3": DecoderBlock(d2, w + 2 * w, d3),  # 32 -> 64, skips Block3 + both Block2
                # 64 -> 128, skips both Block1 (without Block1's pool: 128 -> 128, no upsampling)
                "up2": DecoderBlock(d3, 2 * w, d4, scale=2 if self.block1_pool else 1),
                "up1": DecoderBlock(d4, 0, d5),  # 128 -> 256
                "out": nn.Conv2d(d5, 1, kernel_size=1),
            }
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    # -- description ---------------------------------------------------------------------------
    def arch_dict(self) -> dict:
        """Constructor arguments, for the model metadata (``ResUNet18(**arch_dict())`` rebuilds it)."""
        return {
            "in_channels": self.in_channels,
            "width": self.width,
            "blocks_per_stage": self.blocks_per_stage,
            "decoder_channels": list(self.decoder_channels),
            "zero_init_residual": self.zero_init_residual,
            "block1_pool": self.block1_pool,
            "classifier_topk": self.classifier_topk,
            "inputs": self.inputs,
        }

    def classifier_modules(self) -> list[nn.Module]:
        return [self.head_nc, self.head_c, self.block3, self.block4, self.block5, self.block6, self.fc]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """Parameters of Step 1 (heads, Block3..Block6, fc)."""
        return [p for m in self.classifier_modules() for p in m.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of Step 2 (the U-Net-like decoder)."""
        return list(self.decoder.parameters())

    def freeze_classifier(self, frozen: bool = True) -> None:
        """Freeze Step 1 for decoder training: no gradients, encoder BN statistics kept (eval mode)."""
        self._classifier_frozen = bool(frozen)
        for p in self.classifier_parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResUNet18:
        super().train(mode)
        if self._classifier_frozen:
            for m in self.classifier_modules():
                m.train(False)
        return self

    # -- computation -----------------------------------------------------------------------------
    def _check_inputs(self, nc: Tensor, c: Tensor) -> None:
        if nc.shape != c.shape:
            raise ValueError(f"non-contrast {tuple(nc.shape)} and contrast {tuple(c.shape)} shapes differ")
        if nc.ndim != 4 or nc.shape[1] != self.in_channels or nc.shape[-1] % 32 or nc.shape[-2] % 32:
            raise ValueError(
                f"expected (B, {self.in_channels}, H, W) inputs with H, W multiples of 32, got {tuple(nc.shape)}"
            )

    def contrast_head(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Block1 and Block2 outputs of the contrast head alone, for :meth:`encode`'s ``contrast_features``.

        Several non-contrast frames are often paired with the same contrast frame; inference
        computes this once per contrast frame and reuses it.
        """
        return self.head_c(c)

    def encode(
        self, nc: Tensor, c: Tensor | None = None, *, contrast_features: tuple[Tensor, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Run Step 1's feature extractor; returns the Block outputs by name.

        ``contrast_features``, the output of :meth:`contrast_head` for the contrast patches, may be
        given instead of ``c``; the result is the same.

        Keys: ``block1_nc``, ``block1_c`` (64 ch, H/2), ``block2_nc``,
        ``block2_c`` (64 ch, H/4), ``block2`` (their concatenation, 128 ch),
        ``block3`` (H/4),
        ``block4`` (H/8), ``block5`` (H/16), ``block6`` (8w ch, H/32); without Block1's pool
        (``block1_pool=False``) Block2..Block6 are twice as large.
        """
        if contrast_features is None:
            if c is None:
                raise ValueError("encode needs the contrast patches c or their contrast_features")
            self._check_inputs(nc, c)
            b1_c, b2_c = self.head_c(c)
        else:
            b1_c, b2_c = contrast_features
            self._check_inputs(nc, nc)
            if b1_c.shape[0] != nc.shape[0] or b1_c.shape[-2:] != (nc.shape[-2] // 2, nc.shape[-1] // 2):
                raise ValueError(
                    f"contrast_features of shape {tuple(b1_c.shape)} do not match patches {tuple(nc.shape)}"
                )
        b1_nc, b2_nc = self.head_nc(nc)
        features = {"block1_nc": b1_nc, "block1_c": b1_c, "block2_nc": b2_nc, "block2_c": b2_c}
        features["block2"] = x = torch.cat([features[name] for name in TAIL_INPUTS], dim=1)
        for name in TAIL_STAGES:
            features[name] = x = getattr(self, name)(x)
        return features

    def classify_features(self, features: dict[str, Tensor]) -> Tensor:
        """CAC-presence logit (B,) from the Block6 features: global average pooling + fc.

        With ``classifier_topk = k > 0``: the mean of the k largest of :meth:`location_logits`.
        """
        if self.classifier_topk:
            loc = self.location_logits(features)
            return loc.topk(min(self.classifier_topk, loc.shape[1]), dim=1).values.mean(dim=1)
        x = torch.flatten(self.avgpool(features[TAIL_STAGES[-1]]), 1)
        return self.fc(x)[:, 0]

    def location_logits(self, features: dict[str, Tensor]) -> Tensor:
        """The fc applied at each Block6 location, (B, H*W); their mean is the average-pooled logit."""
        return self.fc(torch.flatten(features[TAIL_STAGES[-1]], 2).transpose(1, 2))[..., 0]

    def classify(self, nc: Tensor, c: Tensor) -> Tensor:
        """CAC-presence logit (B,) of each patch pair (Step 1 only; the decoder is not run)."""
        return self.classify_features(self.encode(nc, c))

    def decode(self, features: dict[str, Tensor]) -> Tensor:
        """ROI logit map (B, 1, H, W) from :meth:`encode`'s features (Step 2)."""
        x = features[TAIL_STAGES[-1]]
        for name, skips in DECODER_SKIPS.items():
            skip = torch.cat([features[s] for s in skips], dim=1) if skips else None
            x = self.decoder[name](x, skip)
        return self.decoder["out"](x)

    def forward(self, nc: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(cls_logit (B,), roi_logit (B, 1, H, W))`` for patch pairs ``nc``, ``c`` of shape (B, C, H, W)."""
        features = self.encode(nc, c)
        return self.classify_features(features), self.decode(features)


def gated_roi(cls_logit: Tensor, roi_logit: Tensor, threshold: float = CLASSIFIER_THRESHOLD) -> Tensor:
    """Classifier gating (paper Fig. 3): ROI probabilities, zero on patches called negative.

    Returns ``sigmoid(roi_logit)`` (B, 1, H, W) multiplied by
    ``sigmoid(cls_logit) >= threshold`` per patch.

    Examples
    --------
    >>> roi = gated_roi(torch.tensor([2.0, -2.0]), torch.zeros(2, 1, 4, 4))
    >>> roi[:, 0, 0, 0].tolist()  # patch 1 is called negative: its ROI is empty
    [0.5, 0.0]
    """
    keep = (torch.sigmoid(cls_logit.float()) >= threshold).to(torch.float32)
    return torch.sigmoid(roi_logit.float()) * keep.view(-1, *([1] * (roi_logit.ndim - 1)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (weights and biases; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: ResUNet18, input_size: int = 256, part: str = "all") -> dict[str, int]:
    """Multiply-accumulates and FLOPs of one patch pair, counted with forward hooks.

    Counts the conv layers (``out_pixels * out_ch * in_ch/groups * kh * kw``)
    and linear layers (``in * out`` at each position they are applied to); BN, ReLU, pooling, interpolation and
    additions are ignored (a few percent).  ``FLOPs = 2 * MACs``.  ``part``:
    "all" (classifier + decoder), "classifier" or "decoder".  Returns
    ``{"macs", "flops", "classifier_macs", "decoder_macs"}``.
    """
    decoder_ids = {id(m) for m in model.decoder.modules()}
    macs = {"classifier": 0, "decoder": 0}

    def hook(module, inputs, output):
        key = "decoder" if id(module) in decoder_ids else "classifier"
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs[key] += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs[key] += output.numel() // output.shape[0] * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        x = torch.zeros(1, model.in_channels, input_size, input_size, device=next(model.parameters()).device)
        with torch.no_grad():
            model(x, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = {"all": macs["classifier"] + macs["decoder"], "classifier": macs["classifier"], "decoder": macs["decoder"]}[
        part
    ]
    return {
        "macs": total,
        "flops": 2 * total,
        "classifier_macs": macs["classifier"],
        "decoder_macs": macs["decoder"],
    }
