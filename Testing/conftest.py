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
