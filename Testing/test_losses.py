"""Losses: boundary loss signed distances, generalized Dice, rebalance schedule."""

import numpy as np
import pytest
import torch
from CACTrainerLib import losses
from scipy import ndimage


def test_signed_distance_map_signs_and_reference_formula():
    m = np.zeros((40, 50), bool)
    m[10:20, 15:30] = True
    d = losses.signed_distance_map(m)
    assert d.dtype == np.float32
    assert (d[~m] > 0).all()
    assert (d[m] <= 0).all()
    assert d[15, 22] < 0  # deep inside: negative
    assert d[10, 20] == 0  # boundary pixel of the target: zero (reference convention)
    # outside: Euclidean distance in pixels to the nearest target pixel
    assert d[5, 22] == pytest.approx(5.0)
    assert d[15, 35] == pytest.approx(6.0)
    # independent computation: brute-force nearest distances
    rr, cc = np.nonzero(m)
    br, bc = np.nonzero(~m)
    for r, c in [(0, 0), (25, 40), (12, 31)]:
        assert d[r, c] == pytest.approx(np.sqrt(((rr - r) ** 2 + (cc - c) ** 2).min()), rel=1e-6)
    # inside: minus (distance to nearest background pixel - 1)
    for r, c in [(15, 22), (11, 16)]:
        assert d[r, c] == pytest.approx(-(np.sqrt(((br - r) ** 2 + (bc - c) ** 2).min()) - 1), rel=1e-6)
    ref = ndimage.distance_transform_edt(~m) * ~m - (ndimage.distance_transform_edt(m) - 1) * m
    np.testing.assert_allclose(d, ref, rtol=1e-6)


def test_signed_distance_map_empty_and_batch():
    assert not losses.signed_distance_map(np.zeros((16, 16), bool)).any()
    batch = np.zeros((3, 1, 16, 16), bool)
    batch[1, 0, 4:8, 4:8] = True
    d = losses.signed_distance_map(batch)
    assert d.shape == batch.shape
    assert not d[0].any() and not d[2].any()
    np.testing.assert_allclose(d[1, 0], losses.signed_distance_map(batch[1, 0]))
    # sampling in mm scales distances
    ds = losses.signed_distance_map(batch[1, 0], sampling=(0.5, 0.5))
    assert ds[0, 5] == pytest.approx(0.5 * d[1, 0][0, 5])


def test_boundary_loss_prefers_the_target():
    m = np.zeros((2, 1, 32, 32), bool)
    m[:, :, 10:20, 10:20] = True
    dist = torch.from_numpy(losses.signed_distance_map(m))
    exact = torch.from_numpy(m.astype(np.float32))
    shifted = torch.roll(exact, 5, dims=-1)
    blob = torch.ones_like(exact)
    le, ls, lb = (losses.boundary_loss(p, dist) for p in (exact, shifted, blob))
    assert le < ls < lb
    assert float(le) == pytest.approx(float((exact * dist).mean()))
    # empty targets: all-zero maps, zero loss whatever the prediction
    zero = torch.zeros_like(dist)
    assert float(losses.boundary_loss(blob, zero)) == 0.0


def test_generalized_dice_edge_cases():
    t = torch.zeros(2, 1, 16, 16)
    t[0, 0, 4:8, 4:8] = 1
    assert float(losses.generalized_dice_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.generalized_dice_loss(1 - t, t)) == pytest.approx(1.0, abs=1e-6)
    # empty target, empty prediction: ~0; per-sample reference form as well
    empty = torch.zeros(1, 1, 16, 16)
    assert float(losses.generalized_dice_loss(empty, empty)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.generalized_dice_loss(empty, empty, per_sample=True)) == pytest.approx(0.0, abs=1e-6)
    # empty target, false positives: loss grows with them and has a finite, useful gradient
    fp = torch.zeros(1, 1, 16, 16)
    fp[0, 0, :4, :4] = 0.9
    fp.requires_grad_(True)
    loss = losses.generalized_dice_loss(fp, empty)
    loss.backward()
    assert 0 < float(loss.detach()) < 1
    assert torch.isfinite(fp.grad).all() and fp.grad[0, 0, 0, 0] > 0
    # false positives in an empty patch of a batch with a positive patch count through the batch sums
    p = t.clone()
    p2 = p.clone()
    p2[1, 0, :4, :4] = 1
    assert losses.generalized_dice_loss(p2, t) > losses.generalized_dice_loss(p, t) + 0.05


def test_generalized_dice_per_sample_matches_formula():
    torch.manual_seed(0)
    p = torch.rand(3, 1, 8, 8)
    t = (torch.rand(3, 1, 8, 8) > 0.7).float()
    got = losses.generalized_dice_loss(p, t, per_sample=True)
    vals = []
    for b in range(3):
        pp = [1 - p[b].flatten(), p[b].flatten()]
        tt = [1 - t[b].flatten(), t[b].flatten()]
        w = [1 / (x.sum() + 1e-10) ** 2 for x in tt]
        inter = sum(w[k] * (pp[k] * tt[k]).sum() for k in range(2))
        union = sum(w[k] * (pp[k].sum() + tt[k].sum()) for k in range(2))
        vals.append(1 - 2 * (inter + 1e-10) / (union + 1e-10))
    assert float(got) == pytest.approx(float(torch.stack(vals).mean()), rel=1e-5)
    # pooled form: same formula with sums over the batch
    pooled = losses.generalized_dice_loss(p, t)
    pp = [1 - p.flatten(), p.flatten()]
    tt = [1 - t.flatten(), t.flatten()]
    w = [1 / x.sum() ** 2 for x in tt]
    ref = 1 - 2 * sum(w[k] * (pp[k] * tt[k]).sum() for k in range(2)) / sum(
        w[k] * (pp[k].sum() + tt[k].sum()) for k in range(2))
    assert float(pooled) == pytest.approx(float(ref), rel=1e-5)


def test_rebalance_schedule():
    s = losses.RebalanceSchedule()
    assert s.alpha(0) == 1.0
    assert s.alpha(1) == pytest.approx(0.99)
    assert s.alpha(50) == pytest.approx(0.5)
    assert s.alpha(99) == pytest.approx(0.01)
    assert s.alpha(500) == pytest.approx(0.01)
    alphas = [s(e) for e in range(120)]
    assert all(a >= b for a, b in zip(alphas, alphas[1:]))
    g, b = torch.tensor(0.4), torch.tensor(-2.0)
    assert float(s.combine(g, b, 50)) == pytest.approx(0.5 * 0.4 + 0.5 * -2.0)
    fast = losses.RebalanceSchedule(step=0.1, floor=0.2)
    assert fast.alpha(3) == pytest.approx(0.7) and fast.alpha(20) == pytest.approx(0.2)


def test_decoder_and_classification_losses():
    logits = torch.tensor([3.0, -3.0])
    labels = torch.tensor([1.0, 0.0])
    assert float(losses.classification_loss(logits, labels)) == pytest.approx(np.log1p(np.exp(-3.0)), rel=1e-5)
    t = torch.zeros(1, 1, 16, 16)
    t[0, 0, 4:10, 4:10] = 1
    dist = torch.from_numpy(losses.signed_distance_map(t.numpy().astype(bool)))
    good = (t * 20 - 10)
    bad = -good
    lg, parts = losses.decoder_loss(good, t, dist, alpha=0.5)
    lb, _ = losses.decoder_loss(bad, t, dist, alpha=0.5)
    assert lg < lb and set(parts) == {"gdl", "boundary", "alpha"}


def test_decoder_detection_loss_sees_the_small_deposit_the_pooled_dice_misses():
    """A batch with one large ROI_GT and one small one: drawing only the large one costs the batch-pooled
    generalized Dice almost nothing, but the recall term in full; its gradient reaches only the missed
    patch's ROI_GT pixels.  Drawing everywhere costs the false-ROI term."""
    t = torch.zeros(3, 1, 64, 64)
    t[0, 0, 4:60, 4:60] = 1  # a large ROI_GT (3,136 px)
    t[1, 0, 30:36, 30:36] = 1  # a small one (36 px)
    # patch 2: no calcium
    all_found = torch.where(t > 0, 8.0, -8.0)
    small_missed = all_found.clone()
    small_missed[1] = -8.0
    p_all, p_missed = torch.sigmoid(all_found), torch.sigmoid(small_missed)
    gdl_gap = float(losses.generalized_dice_loss(p_missed, t) - losses.generalized_dice_loss(p_all, t))
    det_gap = float(losses.decoder_detection_loss(small_missed, t) - losses.decoder_detection_loss(all_found, t))
    # recall: mean over the 2 patches with calcium of -log(p); the missed one at p = sigmoid(-8)
    expected = (np.log1p(np.exp(8.0)) + np.log1p(np.exp(-8.0))) / 2 - np.log1p(np.exp(-8.0))
    assert gdl_gap < 0.02 and det_gap == pytest.approx(expected, rel=1e-3) and det_gap > 3.0
    x = small_missed.clone().requires_grad_(True)
    losses.decoder_detection_loss(x, t).backward()
    g = x.grad.abs()
    assert float(g[1][t[1] > 0].min()) > 0  # every missed ROI_GT pixel is pushed up (36 < k)
    # outside ROI_GT only the k most probable pixels are pushed down (all equal here: topk takes k of them)
    assert int((g[1][t[1] == 0] > 0).sum()) == 256 and int((g[2] > 0).sum()) == 256
    # drawing the whole patch finds everything but pays the false-ROI term
    everywhere = torch.full_like(t, 8.0)
    assert float(losses.decoder_detection_loss(everywhere, t)) > 7.0
    # the k most probable ROI_GT pixels only: a patch that draws k pixels of a large ROI_GT is found
    part = torch.full_like(t, -8.0)
    part[0, 0, 4:20, 4:20] = 8.0  # 256 of 3,136 px
    assert float(losses.decoder_detection_loss(part[:1], t[:1], k=256)) < 1e-2
    assert float(losses.decoder_detection_loss(part[:1], t[:1], k=1024)) > 1.0
    # no calcium anywhere and nothing drawn: no loss
    assert float(losses.decoder_detection_loss(torch.full_like(t, -8.0), torch.zeros_like(t))) < 1e-2


def test_decoder_loss_detection_weight():
    t = torch.zeros(2, 1, 16, 16)
    t[0, 0, 4:10, 4:10] = 1
    dist = torch.from_numpy(losses.signed_distance_map(t.numpy().astype(bool)))
    logit = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    base, parts0 = losses.decoder_loss(logit, t, dist, alpha=0.7)
    both, parts = losses.decoder_loss(logit, t, dist, alpha=0.7, detection_weight=0.5)
    assert "detection" not in parts0
    assert parts["detection"] == pytest.approx(float(losses.decoder_detection_loss(logit, t)))
    assert float(both) == pytest.approx(float(base) + 0.5 * parts["detection"], rel=1e-5)
