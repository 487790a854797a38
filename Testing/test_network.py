"""Double-head ResUNet-18: shapes, parameter counts, FLOPs, gating, freezing."""

import pytest
import torch
from CACIdentifierLib.network import ResUNet18, count_flops, count_parameters, gated_roi
from torch import nn


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ResUNet18().eval()


def conv(i, o, k):
    return i * o * k * k


def bn(c):
    return 2 * c


def basic(i, o):  # BasicBlock with projection when shapes change
    n = conv(i, o, 3) + bn(o) + conv(o, o, 3) + bn(o)
    if i != o:
        n += conv(i, o, 1) + bn(o)
    return n


def test_shapes(model):
    x = torch.randn(2, 1, 256, 256)
    with torch.no_grad():
        cls, roi = model(x, x * 0.5)
        feats = model.encode(x, x)
    assert cls.shape == (2,) and roi.shape == (2, 1, 256, 256)
    expect = {
        "block1_nc": (64, 128),
        "block2_nc": (64, 64),
        "block2": (128, 64),
        "block3": (64, 64),
        "block4": (128, 32),
        "block5": (256, 16),
        "block6": (512, 8),
    }
    for k, (ch, hw) in expect.items():
        assert feats[k].shape == (2, ch, hw, hw), k
    with torch.no_grad():
        torch.testing.assert_close(model.classify(x, x), model(x, x)[0])
    with pytest.raises(ValueError):
        model(x, x[:, :, :128])


def test_parameter_counts_against_hand_count(model):
    # independent count from the layer shapes of the paper's blocks
    head = conv(1, 64, 7) + bn(64) + basic(64, 64)
    tail = basic(128, 64) + basic(64, 128) + basic(128, 256) + basic(256, 512) + (512 + 1)
    classifier = 2 * head + tail
    assert sum(p.numel() for p in model.head_nc.parameters()) == head
    assert sum(p.numel() for p in model.classifier_parameters()) == classifier

    def dec(i, s, o):
        return conv(i + s, o, 3) + bn(o) + conv(o, o, 3) + bn(o)

    d1, d2, d3, d4, d5 = model.decoder_channels
    decoder = dec(512, 256, d1) + dec(d1, 128, d2) + dec(d2, 64 + 128, d3) + dec(d3, 128, d4) + dec(d4, 0, d5)
    decoder += d5 + 1
    assert sum(p.numel() for p in model.decoder_parameters()) == decoder
    assert count_parameters(model) == classifier + decoder
    assert count_parameters(model) < 15_000_000
    # torchvision ResNet-18 depth doubles the blocks
    deep = ResUNet18(blocks_per_stage=2)
    extra = 2 * basic(64, 64) + basic(64, 64) + basic(128, 128) + basic(256, 256) + basic(512, 512)
    assert sum(p.numel() for p in deep.classifier_parameters()) == classifier + extra


def test_flops_hand_count(model):
    f = count_flops(model)
    # classifier: Block1 7x7 convs at 128x128 + Block2 at 64x64 (both heads) + tail
    head = 128 * 128 * conv(1, 64, 7) + 64 * 64 * 2 * conv(64, 64, 3)
    tail = 64 * 64 * (conv(128, 64, 3) + conv(64, 64, 3) + conv(128, 64, 1))
    tail += 32 * 32 * (conv(64, 128, 3) + conv(128, 128, 3) + conv(64, 128, 1))
    tail += 16 * 16 * (conv(128, 256, 3) + conv(256, 256, 3) + conv(128, 256, 1))
    tail += 8 * 8 * (conv(256, 512, 3) + conv(512, 512, 3) + conv(256, 512, 1)) + 512
    assert f["classifier_macs"] == 2 * head + tail
    d1, d2, d3, d4, d5 = model.decoder_channels
    dec = 16 * 16 * (conv(512 + 256, d1, 3) + conv(d1, d1, 3)) + 32 * 32 * (conv(d1 + 128, d2, 3) + conv(d2, d2, 3))
    dec += 64 * 64 * (conv(d2 + 64 + 128, d3, 3) + conv(d3, d3, 3)) + 128 * 128 * (conv(d3 + 128, d4, 3) + conv(d4, d4, 3))
    dec += 256 * 256 * (conv(d4, d5, 3) + conv(d5, d5, 3) + d5)
    assert f["decoder_macs"] == dec
    assert f["flops"] == 2 * f["macs"] == 2 * (f["classifier_macs"] + f["decoder_macs"])


def test_gating_zeroes_negative_patches():
    cls = torch.tensor([3.0, -3.0, 0.1])
    roi = torch.randn(3, 1, 8, 8)
    g = gated_roi(cls, roi)
    torch.testing.assert_close(g[0], torch.sigmoid(roi[0]))
    assert g[1].abs().max() == 0
    torch.testing.assert_close(g[2], torch.sigmoid(roi[2]))
    assert gated_roi(cls, roi, threshold=0.6)[2].max() == 0


def test_freeze_classifier_blocks_gradients_and_bn_updates():
    torch.manual_seed(1)
    m = ResUNet18(width=16, decoder_channels=(32, 16, 16, 8, 8))
    m.freeze_classifier()
    m.train()
    assert not m.block3.training and m.decoder.training
    before = m.head_nc.bn1.running_mean.clone()
    x = torch.randn(2, 1, 64, 64)
    _, roi = m(x, x)
    roi.mean().backward()
    assert all(p.grad is None for p in m.classifier_parameters())
    assert all(p.grad is not None for p in m.decoder_parameters())
    torch.testing.assert_close(m.head_nc.bn1.running_mean, before)
    m.freeze_classifier(False)
    m.train()
    assert m.block3.training and all(p.requires_grad for p in m.parameters())


def test_arch_dict_rebuilds_and_init():
    m = ResUNet18(width=32, blocks_per_stage=2, decoder_channels=(64, 32, 32, 16, 8))
    m2 = ResUNet18(**m.arch_dict())
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in m2.state_dict().items()}
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    std = m.head_nc.conv1.weight.std().item()
    assert std == pytest.approx((2 / (32 * 49)) ** 0.5, rel=0.15)  # kaiming normal, fan_out


def test_without_block1_pool_the_blocks_keep_twice_the_resolution():
    torch.manual_seed(0)
    pooled = ResUNet18(width=8, decoder_channels=(16, 8, 8, 8, 4)).eval()
    full = ResUNet18(**{**pooled.arch_dict(), "block1_pool": False}).eval()
    # the same weights fit both: the pool has none
    full.load_state_dict(pooled.state_dict())
    assert full.arch_dict()["block1_pool"] is False and pooled.arch_dict()["block1_pool"] is True
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        fp, ff = pooled.encode(x, x), full.encode(x, x)
        cls, roi = full(x, x)
    assert ff["block1_nc"].shape == fp["block1_nc"].shape == (2, 8, 32, 32)
    for name in ("block2_nc", "block3", "block4", "block5", "block6"):
        assert ff[name].shape[-1] == 2 * fp[name].shape[-1], name
    assert cls.shape == (2,) and roi.shape == (2, 1, 64, 64)
    # Block2 without the pool is Block2 applied to Block1 itself
    with torch.no_grad():
        torch.testing.assert_close(ff["block2_nc"], full.head_nc.block2(ff["block1_nc"]))
    # the dropped pool costs 4x the compute of everything between Block1's convolution (two heads, 7x7,
    # 1 -> 8 channels at 128x128) and the fc (64 -> 1, after the global pooling)
    block1 = 2 * 128 * 128 * 8 * 49 + 64
    macs_pooled = count_flops(pooled, 256, "classifier")["classifier_macs"]
    assert count_flops(full, 256, "classifier")["classifier_macs"] == block1 + 4 * (macs_pooled - block1)


def test_classifier_topk_averages_the_largest_location_logits():
    """Multiple-instance readout: the fc at each Block6 location, the mean of the k largest."""
    torch.manual_seed(0)
    avg = ResUNet18(width=8, decoder_channels=(16, 8, 8, 8, 4)).eval()
    x, y = torch.rand(3, 1, 64, 64), torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        feats = avg.encode(x, y)
        loc = avg.location_logits(feats)  # Block6 is 2x2 at 64 px
        assert loc.shape == (3, 4) and avg.arch_dict()["classifier_topk"] == 0
        # the fc is linear: the average-pooled logit is the mean of the location logits
        torch.testing.assert_close(avg.classify_features(feats), loc.mean(dim=1))
        ordered = loc.sort(dim=1, descending=True).values
        for k, expected in ((1, ordered[:, 0]), (2, ordered[:, :2].mean(1)), (4, loc.mean(1)), (99, loc.mean(1))):
            m = ResUNet18(**{**avg.arch_dict(), "classifier_topk": k}).eval()
            m.load_state_dict(avg.state_dict())  # no weight changes shape
            torch.testing.assert_close(m.classify_features(feats), expected)
            assert ResUNet18(**m.arch_dict()).classifier_topk == k
    # the gradient reaches only the locations that were read out
    m = ResUNet18(**{**avg.arch_dict(), "classifier_topk": 1}).eval()
    m.load_state_dict(avg.state_dict())
    f = feats["block6"].clone().requires_grad_(True)
    m.classify_features({"block6": f}).sum().backward()
    touched = f.grad.abs().sum(dim=1).flatten(1) > 0
    assert touched.tolist() == torch.nn.functional.one_hot(loc.argmax(1), 4).bool().tolist()
    # MACs: the fc (64 -> 1) at each of Block6's 8x8 locations of a 256-px patch instead of once
    extra = count_flops(m, 256, "classifier")["classifier_macs"] - count_flops(avg, 256, "classifier")["classifier_macs"]
    assert extra == 64 * (64 - 1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="classifier_topk"):
            ResUNet18(classifier_topk=bad)


def test_choose_device_and_autocast():
    from CACIdentifierLib import device as dev
    from CACIdentifierLib.errors import CacError

    assert dev.choose_device("cpu") == torch.device("cpu")
    auto = dev.choose_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if dev._mps_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(CacError, match="CUDA is not available"):
            dev.choose_device("cuda")
    with pytest.raises(CacError, match="unknown device"):
        dev.choose_device("tpu")
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    if flags:
        assert dev.cpu_supports_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    with dev.autocast("cpu"):
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == (torch.bfloat16 if dev.cpu_supports_bf16() else torch.float32)
    assert dev.autocast_dtype("cpu") == (torch.bfloat16 if dev.cpu_supports_bf16() else None)
    with dev.autocast("cpu", enabled=False):
        assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4)).dtype == torch.float32


def test_encode_with_precomputed_contrast_head_is_identical(model):
    gen = torch.Generator().manual_seed(1)
    nc, c = torch.rand(2, 1, 64, 64, generator=gen), torch.rand(2, 1, 64, 64, generator=gen)
    with torch.inference_mode():
        direct = model.encode(nc, c)
        shared = model.encode(nc, contrast_features=model.contrast_head(c))
        for name, value in direct.items():
            assert torch.equal(value, shared[name]), name
        with pytest.raises(ValueError, match="contrast_features"):
            model.encode(nc[:1], contrast_features=model.contrast_head(c))
        with pytest.raises(ValueError, match="contrast patches"):
            model.encode(nc)
