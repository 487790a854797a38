"""Shared test setup: where the real data lives and the marker that skips a test without it.

The real DICOM files are never copied into the repository: they live in
``shared/data`` beside it (``/work/shared/data`` for a checkout in
``/work/main``).  Test modules import the paths from here
(``from conftest import RCA, needs_data``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XA = DATA / "xa"
RCA = XA / "rubo-rca-ecg-96f.dcm"
BIPLANE = XA / "rubo-biplane-b-ecg-17f.dcm"
GE = XA / "ge-static-phantom-jpegls.dcm"
LCA_FRAMES = DATA / "frames" / "lca-clinical-37f"

MISSING = f"real test data not found at {DATA} (clone the shared/ data beside the repository)"

needs_data = pytest.mark.skipif(not RCA.exists(), reason=MISSING)


def require(path: Path) -> Path:
    """``path`` if it exists, else skip the calling test or fixture (the shared data is not there)."""
    if not Path(path).exists():
        pytest.skip(MISSING)
    return path


def refuse_unpickling(monkeypatch) -> None:
    """Make every way into pickle fail: the functions, the Unpickler classes, torch.load, np.load with pickles."""
    import _pickle
    import pickle

    import numpy as np
    import torch

    def refuse(*a, **k):
        raise AssertionError("unpickling used")

    class RefusingUnpickler:
        def __init__(self, *a, **k):
            raise AssertionError("pickle.Unpickler used")

    for module in (pickle, _pickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
        monkeypatch.setattr(module, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(pickle, "_Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    real_np_load = np.load

    def np_load(*a, allow_pickle=False, **k):
        if allow_pickle:
            raise AssertionError("np.load with allow_pickle")
        return real_np_load(*a, allow_pickle=False, **k)

    monkeypatch.setattr(np, "load", np_load)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any use of pickle (functions, Unpickler classes, torch.load, np.load of pickles) fails the test."""
    refuse_unpickling(monkeypatch)


@pytest.fixture(scope="module")
def all_roi_model(tmp_path_factory):
    """A tiny model that calls every patch positive with a ROI everywhere: identify's ROI is then known (and fast)."""
    import torch
    from CACIdentifierLib.modelio import save_model
    from CACIdentifierLib.network import ResUNet18

    torch.manual_seed(0)
    net = ResUNet18(width=8, decoder_channels=[16, 8, 8, 8, 8])
    with torch.no_grad():
        for layer in (net.fc, net.decoder["out"]):
            layer.weight.zero_()
            layer.bias.fill_(10.0)
    path = tmp_path_factory.mktemp("model") / "all.safetensors"
    save_model(path, net.eval(), dtype=None)
    return path
