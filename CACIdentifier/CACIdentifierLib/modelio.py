"""Model files: safetensors weights + JSON metadata, never pickle.

A model is two files:

``NAME.safetensors``
    The weights (fp16 by default for shipped models, or fp32) in the
    safetensors format; its header's ``__metadata__`` holds
    ``{"cac": json.dumps(metadata)}`` so the file is self-describing.
``NAME.json``
    The model card: the same metadata plus ``sha256`` (of the
    ``.safetensors`` file) and ``weights_file``.  Optional when loading; if
    present, the checksum is verified.

Loading reads the header with ``safetensors.safe_open`` and the tensors with
``safetensors.torch.load_file``: no ``torch.load``, no unpickling, so a model
file cannot run code.

Metadata keys (``save_model`` fills the first ones): ``format``
("cac-resunet18"), ``version`` (file format version), ``architecture``
(``ResUNet18.arch_dict()``), ``patch_layout`` (size, origins, stitch mode),
``normalization`` (:data:`patches.NORMALIZATION`), ``roi_gt`` (iterations,
step_px), ``refinement`` (min_island_px, sigma, threshold),
``classifier_threshold``, ``training`` (data, command, epochs, seed...),
``metrics``, ``created``, ``software_version``, ``weights_dtype``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import torch

from . import __version__, refinement
from .errors import CacError
from .fileutil import atomic_output
from .network import CLASSIFIER_THRESHOLD, ResUNet18
from .resources import DEFAULT_MODEL_NAME, MODEL_ENV, default_model_path, find_default_model  # noqa: F401 (re-exported)

FORMAT = "cac-resunet18"
FORMAT_VERSION = 1
METADATA_KEY = "cac"


def default_metadata() -> dict:
    """Metadata for the paper's settings; training code updates ``training`` and ``metrics``."""
    from .patches import FRAME_SIZE, NORMALIZATION, PATCH_SIZE, patch_origins

    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": ResUNet18().arch_dict(),
        "patch_layout": {
            "frame_size": [FRAME_SIZE, FRAME_SIZE],
            "size": PATCH_SIZE,
            "origins": [list(o) for o in patch_origins(FRAME_SIZE, FRAME_SIZE)],
            "stitch_mode": "max",
        },
        "normalization": dict(NORMALIZATION),
        "roi_gt": {"iterations": 4, "step_px": 5},
        "refinement": dict(refinement.DEFAULTS),
        "classifier_threshold": CLASSIFIER_THRESHOLD,
        "training": {},
        "metrics": {},
    }


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def card_path(path: str | os.PathLike) -> Path:
    """The model card next to a weights file: ``model.safetensors`` -> ``model.json``."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")


def save_model(
    path: str | os.PathLike,
    model: ResUNet18,
    metadata: dict | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = torch.float16,
) -> dict:
    """Write ``model`` to ``path`` (.safetensors) and its model card ``<stem>.json``.

    ``metadata`` is merged over :func:`default_metadata`; ``format``,
    ``version``, ``architecture`` (from the model), ``created`` (UTC, ISO
    8601), ``software_version`` and ``weights_dtype`` are set here.  Floating
    tensors are stored as ``dtype`` (float16 by default; None keeps float32);
    BN's ``num_batches_tracked`` stays int64.  Both files are written
    atomically; an existing file is an error unless ``overwrite``.  Returns
    the model card (metadata + ``sha256`` + ``weights_file``).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CacError(f"model file {path} must end in .safetensors")
    card = card_path(path)
    for p in (path, card):
        if p.exists() and not overwrite:
            raise CacError(f"{p} already exists; pass --overwrite to replace it or choose another name")
    meta = default_metadata()
    meta.update(metadata or {})
    meta.update(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "architecture": model.arch_dict(),
            "created": meta.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__,
            "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        }
    )
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        if t.is_floating_point() and dtype is not None:
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    header_json = json.dumps(meta, sort_keys=True)
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: header_json})
        digest = sha256_file(tmp)
    card_data = dict(meta)
    card_data["sha256"] = digest
    card_data["weights_file"] = path.name
    with atomic_output(card, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(card_data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return card_data


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored in a model file's safetensors header (no tensors are read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CacError(f"model file {path} not found; give the path of a .safetensors model")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CacError(f"{path} is not a readable safetensors model ({exc}); re-download or re-train it") from None
    if METADATA_KEY not in header:
        raise CacError(f"{path} has no CAC metadata; it is not a model written by cac train / save_model")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CacError(f"{path} has corrupt metadata ({exc}); re-download or re-train it") from None
    if meta.get("format") != FORMAT:
        raise CacError(f"{path} is a {meta.get('format')!r} model, expected {FORMAT!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
        raise CacError(
            f"{path} uses model format version {meta.get('version')}, this software reads up to "
            f"{FORMAT_VERSION}; update the software"
        )
    if not isinstance(meta.get("architecture"), dict):
        raise CacError(f"{path} metadata has no architecture; it is not a valid CAC model")
    return meta


def verify_checksum(path: str | os.PathLike) -> str | None:
    """Check the weights against the sidecar card's sha256; returns the digest, or None without a card."""
    path = Path(path)
    card = card_path(path)
    if not card.is_file():
        return None
    try:
        expected = json.loads(card.read_text(encoding="utf-8")).get("sha256")
    except (OSError, json.JSONDecodeError) as exc:
        raise CacError(f"model card {card} is unreadable ({exc}); delete or restore it") from None
    if not expected:
        return None
    actual = sha256_file(path)
    if actual != expected:
        raise CacError(
            f"corrupt or modified model file {path}: sha256 {actual[:12]}... does not match "
            f"{expected[:12]}... in {card.name}; re-download or re-train the model"
        )
    return actual


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ResUNet18, dict]:
    """Load a model written by :func:`save_model`; returns ``(model in eval mode, metadata)``.

    Checks the format and version, builds ``ResUNet18(**architecture)``,
    verifies the sha256 against the model card when there is one, loads the
    weights strictly (missing, unexpected or differently shaped tensors ->
    :class:`CacError` naming them) and converts them to float32.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    verify_checksum(path)
    try:
        model = ResUNet18(**meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise CacError(f"{path}: unsupported architecture {meta['architecture']} ({exc})") from None
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CacError(f"{path} is not a readable safetensors model ({exc}); re-download or re-train it") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
        raise CacError(
            f"{path}: weights do not match the architecture {meta['architecture']} - {'; '.join(parts)}; "
            "the file and its metadata disagree"
        )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    if not isinstance(device, torch.device):
        from .device import choose_device

        device = choose_device(device)  # also accepts "auto"; unavailable devices -> CacError
    model.to(device)
    model.eval()
    return model, meta
