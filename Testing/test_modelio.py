"""Model files: safetensors + metadata round trip, checksum, architecture checks, no pickle."""

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from CACIdentifierLib import modelio, resources
from CACIdentifierLib.errors import CacError
from CACIdentifierLib.modelio import load_model, read_metadata, save_model
from CACIdentifierLib.network import ResUNet18

SMALL = {"width": 16, "decoder_channels": (32, 16, 16, 8, 8)}


@pytest.fixture(autouse=True)
def no_pickle(no_unpickling):
    """Every test here runs with every route into pickle refused (see conftest.py)."""


def trained_like(seed=0, **arch):
    torch.manual_seed(seed)
    m = ResUNet18(**{**SMALL, **arch})
    with torch.no_grad():  # non-trivial BN statistics and weights
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.uniform_(-0.1, 0.1)
                b.running_var.uniform_(0.8, 1.2)
                b.weight.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("dtype,tol", [(None, 0.0), (torch.float16, 2e-2)])
def test_round_trip(tmp_path, dtype, tol):
    m = trained_like()
    meta = {"training": {"epochs": 3, "seed": 7}, "metrics": {"f1": 0.9}}
    path = tmp_path / "m.safetensors"
    card = save_model(path, m, meta, dtype=dtype)
    assert (tmp_path / "m.json").is_file()
    assert card["sha256"] == modelio.sha256_file(path)
    m2, meta2 = load_model(path, device="auto" if not torch.cuda.is_available() else "cpu")
    assert meta2["training"] == {"epochs": 3, "seed": 7} and meta2["metrics"] == {"f1": 0.9}
    assert meta2["architecture"] == m.arch_dict() and meta2["format"] == "cac-resunet18"
    assert meta2["refinement"] == {"min_island_px": 1000, "sigma": 3.0, "threshold": 0.5}
    assert not m2.training and all(p.dtype == torch.float32 for p in m2.parameters())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = m(x, x), m2(x, x)
    torch.testing.assert_close(torch.sigmoid(b[0]), torch.sigmoid(a[0]), atol=tol, rtol=0)
    torch.testing.assert_close(torch.sigmoid(b[1]), torch.sigmoid(a[1]), atol=tol, rtol=0)
    with pytest.raises(CacError, match="already exists"):
        save_model(path, m, meta)
    save_model(path, m, meta, overwrite=True)


def test_fp16_file_is_half_size(tmp_path):
    m = trained_like()
    save_model(tmp_path / "a.safetensors", m, dtype=None)
    save_model(tmp_path / "b.safetensors", m)
    sa, sb = (tmp_path / "a.safetensors").stat().st_size, (tmp_path / "b.safetensors").stat().st_size
    assert sb < 0.55 * sa


def test_tampered_file_is_rejected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, trained_like())
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CacError, match="corrupt or modified"):
        load_model(path)
    # without the card there is no checksum; the file itself still loads
    (tmp_path / "m.json").unlink()
    load_model(path)


def test_wrong_architecture_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_model(path, trained_like())
    meta = read_metadata(path)
    other = ResUNet18(**{**SMALL, "width": 8}).state_dict()
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(bad), metadata={"cac": json.dumps(meta)})
    with pytest.raises(CacError, match="wrong shape"):
        load_model(bad)
    meta2 = dict(meta, architecture={**meta["architecture"], "blocks_per_stage": 2})
    save_file({k: v.contiguous() for k, v in trained_like().state_dict().items()}, str(bad),
              metadata={"cac": json.dumps(meta2)})
    with pytest.raises(CacError, match="missing"):
        load_model(bad)
    meta3 = dict(meta, architecture={**meta["architecture"], "heads": 3})
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"cac": json.dumps(meta3)})
    with pytest.raises(CacError, match="unsupported architecture"):
        load_model(bad)


def test_not_a_model(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CacError, match="not found"):
        load_model(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CacError, match="not a readable"):
        load_model(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CacError, match="no CAC metadata"):
        load_model(plain)
    save_file({"x": torch.zeros(1)}, str(plain), metadata={"cac": json.dumps({"format": "cac-resunet18", "version": 99})})
    with pytest.raises(CacError, match="version"):
        load_model(plain)


def test_source_never_unpickles():
    """No module of either Lib imports a pickle-based loader or calls torch.load / np.load(allow_pickle)."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "CACIdentifier" / "CACIdentifierLib").glob("*.py"))
    files += sorted((root / "CACTrainer" / "CACTrainerLib").glob("*.py"))
    assert len(files) > 20
    banned_modules = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("Unpickler", "_Unpickler"), path
                if isinstance(node.value, ast.Name):
                    assert (node.value.id, node.attr) != ("torch", "load"), path
                if isinstance(node.value, ast.Attribute) and node.attr == "load":
                    assert node.value.attr != "serialization", path
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in banned_modules for n in names), (path, names)
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


def test_the_refusal_itself_works(tmp_path):
    # The fixture must catch each route, or the tests above prove nothing.
    import io

    import numpy as np

    data = pickle.dumps({"a": 1})
    for attempt in (lambda: pickle.loads(data), lambda: pickle.Unpickler(io.BytesIO(data)).load(),
                    lambda: torch.load(io.BytesIO(data))):
        with pytest.raises(AssertionError):
            attempt()
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(AssertionError):
        np.load(tmp_path / "o.npy", allow_pickle=True)


def test_default_model_path(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    monkeypatch.setenv("CAC_MODEL", str(path))
    with pytest.raises(CacError, match="does not exist"):
        resources.default_model_path()
    monkeypatch.setenv("CAC_MODEL", str(tmp_path))  # a folder exists, but is no model file
    with pytest.raises(CacError, match="the folder .* not to a model file"):
        resources.default_model_path()
    monkeypatch.setenv("CAC_MODEL", str(path))
    save_model(path, trained_like())
    assert resources.default_model_path() == path
    monkeypatch.delenv("CAC_MODEL")
    shipped = Path(resources.__file__).resolve().parents[2] / "Resources" / "Models" / "cac_default.safetensors"
    if shipped.is_file():
        assert resources.default_model_path() == shipped
    else:
        with pytest.raises(CacError, match="no default model"):
            resources.default_model_path()


def test_ctrl_c_while_loading_is_an_interrupt_not_an_unreadable_model(tmp_path, monkeypatch):
    """A SIGINT inside safetensors' native loader surfaced as a TypeError and so as "not a readable model"
    (a CI run's `cac identify` interrupted at that moment exited 2, not 130); it is held and passed on."""
    import os
    import signal

    import safetensors.torch

    path = tmp_path / "m.safetensors"
    modelio.save_model(path, ResUNet18(width=8, decoder_channels=(16, 8, 8, 8, 8)))

    def interrupted_load(name, device="cpu"):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while "native code" runs ...
            for _ in range(1000):  # ... Python checks for it here ...
                pass
        except KeyboardInterrupt:
            pass  # ... and the native code swallows what the handler raised
        raise TypeError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    monkeypatch.setattr(safetensors.torch, "load_file", interrupted_load)
    # Python's own handler, as in a terminal (a CI job started in the background inherits SIGINT ignored).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            modelio.load_model(path)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        # Ignored SIGINT stays ignored: the load's own error is reported, no interrupt is made up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with pytest.raises(CacError, match="not a readable safetensors model"):
            modelio.load_model(path)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)
