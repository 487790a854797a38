"""The vessel channel (background.with_vessels): the paired contrast patch's residual under the non-contrast head.

The non-contrast head reads its frame, its residual and the *paired* contrast frame's residual; the
contrast head reads its frame, its residual and zeros.  What identify feeds a widened model is checked
with the residual channel's in test_background.py.
"""

from __future__ import annotations

import numpy as np
import pytest
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


def test_vessel_alignment_benchmark_runs(tmp_path):
    import json

    from benchmark_scripts import load

    out = tmp_path / "va.json"
    assert load("vessel_alignment").main(["--test", "3", "--seed", "7000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] > 0 and set(result["maps"]) == {"non-contrast", "paired contrast", "other-phase contrast"}
    # The residual of the non-contrast frame shows the calcium darker than its surroundings in most frames.
    assert result["maps"]["non-contrast"]["darker_fraction"] > 0.8
    lo, hi = result["paired_minus_other_phase"]["ci95"]
    assert lo <= result["paired_minus_other_phase"]["mean"] <= hi
