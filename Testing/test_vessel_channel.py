"""The vessel channel (background.with_vessels): the paired contrast patch's residual under the non-contrast head.

A frame+residual model widened with zero weights must give exactly its old probabilities, and with
non-zero weights on the new channel identify must feed the network what the documentation says: the
non-contrast head reads its frame, its residual and the *paired* contrast frame's residual; the contrast
head reads its frame, its residual and zeros.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from CACIdentifierLib.background import (
    FRAME_AND_RESIDUAL,
    FRAME_RESIDUAL_AND_VESSELS,
    RESIDUAL_GAIN,
    head_inputs,
    with_vessels,
)
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.network import ResUNet18

SMALL = {"width": 8, "decoder_channels": [8] * 5}


def test_with_vessels_puts_the_contrast_residual_under_the_non_contrast_head():
    rng = np.random.default_rng(0)
    nc, c, bg_nc, bg_c = (rng.random((3, 1, 16, 16)).astype(np.float32) for _ in range(4))
    nc3, c3 = head_inputs(nc, c, bg_nc, bg_c, FRAME_RESIDUAL_AND_VESSELS)
    assert nc3.shape == c3.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(nc3[:, 0], nc[:, 0])
    np.testing.assert_allclose(nc3[:, 1], RESIDUAL_GAIN * (nc - bg_nc)[:, 0], atol=1e-6)
    np.testing.assert_allclose(nc3[:, 2], RESIDUAL_GAIN * (c - bg_c)[:, 0], atol=1e-6)
    np.testing.assert_array_equal(c3[:, :2], head_inputs(nc, c, bg_nc, bg_c, FRAME_AND_RESIDUAL)[1])
    assert not c3[:, 2].any()
    with pytest.raises(ValueError, match="one shape"):
        with_vessels(nc3[:, :2], c3)
    with pytest.raises(ValueError, match="inputs must be"):
        head_inputs(nc, c, bg_nc, bg_c, "frame+motion")


def test_architecture_and_model_card_know_the_vessel_inputs():
    from CACIdentifierLib.modelio import default_metadata, validate_metadata

    with pytest.raises(ValueError, match="in_channels 3"):
        ResUNet18(in_channels=2, inputs=FRAME_RESIDUAL_AND_VESSELS)
    arch = ResUNet18(in_channels=3, inputs=FRAME_RESIDUAL_AND_VESSELS, **SMALL).arch_dict()
    meta = dict(default_metadata(), architecture=arch)
    assert validate_metadata(meta, "m")["architecture"]["inputs"] == FRAME_RESIDUAL_AND_VESSELS
    with pytest.raises(CacError, match="needs in_channels 3"):
        validate_metadata(dict(meta, architecture=dict(arch, in_channels=2)), "m")


def test_make_batch_vessel_channel_follows_the_augmented_contrast_patch():
    from CACTrainerLib import dataset as D

    rng = np.random.default_rng(2)
    n = 2
    nc, c, bg = (rng.random((n, 512, 512)).astype(np.float16) for _ in range(3))
    z = np.zeros((n, 512, 512), bool)
    fs = D.FrameSet(nc, c, z, z, np.zeros((n, 5), np.float32), np.full((n, 2), 0.3), np.arange(n),
                    np.arange(n) + 5, np.zeros((n, 5), bool), bg, ["a", "a"], ["p", "p"])
    ids = list(range(5, 10)) * 2
    res = D.make_batch(fs, ids, inputs=FRAME_AND_RESIDUAL)
    ves = D.make_batch(fs, ids, inputs=FRAME_RESIDUAL_AND_VESSELS)
    np.testing.assert_array_equal(ves["nc"][:, :2], res["nc"])
    np.testing.assert_array_equal(ves["nc"][:, 2], res["c"][:, 1])
    assert not ves["c"][:, 2].any()
    # Augmented (flips, gain, gamma, noise drawn per patch): the vessels under the non-contrast head are
    # the residual of the contrast patch as it was augmented, flipped with it.
    aug = D.make_batch(fs, ids, np.random.default_rng(3), D.Augment(), inputs=FRAME_RESIDUAL_AND_VESSELS)
    np.testing.assert_array_equal(aug["nc"][:, 2], aug["c"][:, 1])
    assert not np.array_equal(aug["nc"][:, 2], ves["nc"][:, 2])


@pytest.fixture(scope="module")
def cine():
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    return generate_acquisition(PhantomParams(n_frames=32), seed=7, patient=1, calcium_free=False).to_cine()


def test_identify_feeds_the_paired_vessels_a_widened_model_starts_from(cine, tmp_path):
    from CACIdentifierLib.inference import identify
    from CACIdentifierLib.modelio import default_metadata, load_model, save_model
    from CACIdentifierLib.patches import extract_patches, normalize_frame, prepare_frame
    from CACTrainerLib.training import _load_initial_weights

    torch.manual_seed(0)
    res = ResUNet18(**SMALL, in_channels=2, inputs=FRAME_AND_RESIDUAL).eval()
    path = tmp_path / "res.safetensors"
    save_model(path, res, dict(default_metadata(), architecture=res.arch_dict()), dtype=torch.float32)
    wide = ResUNet18(**SMALL, in_channels=3, inputs=FRAME_RESIDUAL_AND_VESSELS)
    _load_initial_weights(wide, path)
    wide.eval()
    meta = {"architecture": wide.arch_dict()}
    a = identify(cine, load_model(path)[0], {}, use_autocast=False, workers=1)
    b = identify(cine, wide, meta, sync=a.sync, use_autocast=False, workers=1)
    # Zero weights on the new channel: the widened model computes what the frame+residual model did.
    np.testing.assert_allclose(a.patch_probabilities, b.patch_probabilities, atol=1e-5)
    with torch.no_grad():
        for head in (wide.head_nc, wide.head_c):
            head.conv1.weight[:, 2] = torch.randn_like(head.conv1.weight[:, 2])
    c = identify(cine, wide, meta, sync=a.sync, use_autocast=False, workers=2)
    assert np.abs(c.patch_probabilities - a.patch_probabilities).max() > 1e-3

    def prepared(k):
        return normalize_frame(prepare_frame(cine.frames[k], cine.spacing_mm)[0])

    bg = extract_patches(np.median([prepared(k) for k in a.frames], axis=0))
    for i in range(len(a.frames)):
        p_nc, p_c = (extract_patches(prepared(k)) for k in (a.frames[i], a.contrast_frames[i]))
        r_nc, r_c = RESIDUAL_GAIN * (p_nc - bg), RESIDUAL_GAIN * (p_c - bg)
        nc = torch.from_numpy(np.stack([p_nc, r_nc, r_c], 1).astype(np.float32))
        cc = torch.from_numpy(np.stack([p_c, r_c, np.zeros_like(p_c)], 1).astype(np.float32))
        with torch.inference_mode():
            expected = torch.sigmoid(wide.classify(nc, cc)).numpy()
        np.testing.assert_allclose(c.patch_probabilities[i], expected, atol=1e-4)
