"""Grad-CAM (equals CAM for Block6 + GAP + fc), PNG output, `cac gradcam` and `cac model-info`."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cac.cli import main
from CACIdentifierLib.modelio import save_model
from CACIdentifierLib.network import ResUNet18, count_flops, count_parameters
from CACTrainerLib.gradcam import grad_cam, save_gradcam_png
from conftest import BIPLANE, RCA, needs_data

SMALL = {"width": 16, "decoder_channels": (32, 16, 16, 16, 16)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = ResUNet18(**SMALL)
    with torch.no_grad():
        m.fc.weight.normal_()
    return m.eval()


def test_block6_gradcam_equals_class_activation_map(model):
    rng = np.random.default_rng(0)
    nc, c = rng.random((256, 256), dtype=np.float32), rng.random((256, 256), dtype=np.float32)
    cam, prob = grad_cam(model, nc, c, return_probability=True)
    assert cam.shape == (256, 256) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    # independent closed form: ReLU(sum_k w_k A_k) (Zhou et al. CAM), upsampled and scaled to max 1
    with torch.no_grad():
        x, y = torch.from_numpy(nc)[None, None], torch.from_numpy(c)[None, None]
        a = model.encode(x, y)["block6"]
        ref = F.relu(torch.einsum("k,bkij->bij", model.fc.weight[0], a))[:, None]
        ref = F.interpolate(ref, size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
        ref = (ref / ref.max()).numpy()
        assert prob == pytest.approx(torch.sigmoid(model.classify(x, y)).item(), abs=1e-6)
    np.testing.assert_allclose(cam, ref, atol=1e-5)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_other_layers_and_errors(model):
    x = np.random.default_rng(1).random((256, 256), dtype=np.float32)
    from CACTrainerLib.gradcam import LAYERS

    # The CLI's --layer check offers exactly the encoder outputs on the classifier's path.
    assert set(LAYERS) == set(model.encode(torch.zeros(1, 1, 256, 256), torch.zeros(1, 1, 256, 256))) - {"block1"}
    for layer in LAYERS:
        cam = grad_cam(model, x, x, layer=layer)
        assert cam.shape == (256, 256) and 0.0 <= cam.min() and cam.max() <= 1.0
    with pytest.raises(ValueError):
        grad_cam(model, x, x, layer="block9")
    with pytest.raises(ValueError):
        grad_cam(model, np.zeros((2, 1, 256, 256)), np.zeros((2, 1, 256, 256)))


def test_png_written_atomically(tmp_path, model):
    x = np.random.default_rng(2).random((256, 256), dtype=np.float32)
    out = tmp_path / "cam.png"
    save_gradcam_png(out, x, x, grad_cam(model, x, x), probability=0.7)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from CACIdentifierLib.errors import CacError

    with pytest.raises(CacError):
        save_gradcam_png(out, x, x, x)
    assert [p.name for p in tmp_path.iterdir()] == ["cam.png"]


def test_model_info_default_and_file(tmp_path, model, capsys, monkeypatch):
    assert main(["model-info", "--architecture", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    default = ResUNet18()
    assert info["parameters"]["total"] == count_parameters(default)
    assert info["flops_per_frame"]["total"] == 5 * count_flops(default)["flops"]
    assert info["metadata"] is None
    path = tmp_path / "m.safetensors"
    save_model(path, model, {"training": {"epochs": 2}})
    assert main(["model-info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"{count_parameters(model):,}" in text and "training" in text
    assert main(["model-info", str(tmp_path / "none.safetensors")]) == 2
    assert main(["model-info", str(path), "--architecture"]) == 2
    assert "not both" in capsys.readouterr().err
    # Without a file: the model `cac identify` uses without --model ($CAC_MODEL here), card and all.
    monkeypatch.setenv("CAC_MODEL", str(path))
    assert main(["model-info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["training"] == {"epochs": 2}
    assert main(["model-info"]) == 0
    assert capsys.readouterr().out.startswith(f"model: {path} (the default model of cac identify)")
    monkeypatch.setenv("CAC_MODEL", str(tmp_path / "gone.safetensors"))
    assert main(["model-info"]) == 2
    assert "CAC_MODEL" in capsys.readouterr().err


def test_model_info_summarises_the_feature_statistics(tmp_path, model, capsys):
    """The card's per-feature mean and SD (512 values each for the default model) once flooded the terminal."""
    from CACIdentifierLib.ood import feature_statistics

    pooled = np.random.default_rng(4).normal(0.0, 1.0, (40 * 5, 128))  # 40 frames x 5 patches, 128 channels
    stats = feature_statistics(pooled, data="held-out phantom")
    path = tmp_path / "m.safetensors"
    save_model(path, model, {"feature_statistics": stats})
    assert main(["model-info", str(path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "feature_statistics" in line]
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert lines[0].startswith("  feature_statistics: 128 features from 40 frames (held-out phantom); frame score "
                               f"median {stats['frame_score_median']:.3g}, 99th percentile {stats['frame_score_q99']:.3g}")
    assert f"{stats['mean'][0]}" not in lines[0] and "--json" in lines[0]
    assert main(["model-info", str(path), "--json"]) == 0  # complete there
    card = json.loads(capsys.readouterr().out)["metadata"]["feature_statistics"]
    assert card["mean"] == pytest.approx(stats["mean"]) and card["std"] == pytest.approx(stats["std"])


def test_model_info_splits_long_card_entries(tmp_path, model, capsys):
    """A trained card's metrics and training record were single lines of 500-3,400 characters."""
    training = {"data": {"val_patients": [f"P{k:03d}" for k in range(39)], "val": {"patients": 39}},
                "machine": "2 cores", "command": "cac train ds --out m.safetensors"}
    metrics = {"validation": {"auc": 0.8135518641756646, "detection": {"sensitivity": 0.7916666666666666,
                                                                        "specificity": 0.375}, "f1": 0.6743772241992882}}
    path = tmp_path / "m.safetensors"
    save_model(path, model, {"training": training, "metrics": metrics, "classifier_threshold": 0.24311064928770065})
    assert main(["model-info", str(path)]) == 0
    out = capsys.readouterr().out
    card_lines = out.split("metadata:\n", 1)[1].splitlines()
    assert max(map(len, card_lines)) < 100, out
    for line in ("  metrics:", "    validation:", "      auc: 0.8136", '      detection: {"sensitivity": 0.7917, "specificity": 0.375}',
                 "      val_patients: [39 items: --json lists them]", "  classifier_threshold: 0.2431",
                 '    command: "cac train ds --out m.safetensors"'):
        assert line in out.splitlines(), (line, out)
    assert "P017" not in out
    assert main(["model-info", str(path), "--json"]) == 0  # complete there
    card = json.loads(capsys.readouterr().out)["metadata"]
    assert card["training"]["data"]["val_patients"][17] == "P017" and card["metrics"] == metrics


@needs_data
def test_cli_gradcam_on_real_cine(tmp_path, model, capsys):
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    cine = str(BIPLANE)
    out = tmp_path / "cam.png"
    rc = main(["gradcam", str(path), cine, "--frame", "3", "--contrast-frame", "12", "--patch", "4", "--out", str(out)])
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert "patch 4" in capsys.readouterr().out
    assert main(["gradcam", str(path), cine, "--frame", "3", "--contrast-frame", "12", "--out", str(out)]) == 2
    assert main(["gradcam", str(path), cine, "--frame", "99", "--contrast-frame", "1", "--out",
                 str(tmp_path / "x.png")]) == 2


@needs_data
def test_cli_gradcam_pairs_with_synchronization(tmp_path, model, capsys):
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    cine = str(RCA)
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.sync import synchronize_cine

    pairs = {int(a): int(b) for a, b in synchronize_cine(load_cine(cine)).pairs}
    k = min(pairs)
    out = tmp_path / "cam.png"
    assert main(["gradcam", str(path), cine, "--frame", str(k), "--out", str(out)]) == 0
    assert out.is_file()
    not_paired = next(f for f in range(96) if f not in pairs)
    assert main(["gradcam", str(path), cine, "--frame", str(not_paired), "--out", str(tmp_path / "y.png")]) == 2
    assert "non-contrast frame" in capsys.readouterr().err
    # A model reading the residual channel gets it, against the background of the paired frames.
    torch.manual_seed(4)
    wide = tmp_path / "wide.safetensors"
    save_model(wide, ResUNet18(**SMALL, in_channels=2, inputs="frame+residual").eval())
    assert main(["gradcam", str(wide), cine, "--frame", str(k), "--out", str(tmp_path / "w.png")]) == 0
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_cli_gradcam_warns_of_a_pair_on_the_wrong_side_of_the_onset(tmp_path, model, capsys):
    """The RCA cine's contrast arrives at frame 16: a swapped pair still gives its map, with one warning per frame."""
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    cine = str(RCA)
    assert main(["gradcam", str(path), cine, "--frame", "5", "--contrast-frame", "30", "--out",
                 str(tmp_path / "a.png")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["gradcam", str(path), cine, "--frame", "30", "--contrast-frame", "5", "--out",
                 str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert "--frame 30 is at or after the contrast onset (frame 16)" in err
    assert "--contrast-frame 5 is before the contrast onset (frame 16)" in err
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
