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
from .background import IN_CHANNELS, INPUTS
from .errors import CacError, printable
from .fileutil import atomic_output, write_error
from .network import CLASSIFIER_THRESHOLD, ResUNet18

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


# --------------------------------------------------------------------------- metadata schema
#
# Every field a model file or card may carry, with its type and range, checked before any tensor
# is built: a 100-byte file must not make the loader build a 4096-wide network.

ARCHITECTURE_LIMITS = {
    "in_channels": (1, 4),
    "width": (1, 256),
    "blocks_per_stage": (1, 4),
}
DECODER_CHANNEL_LIMITS = (1, 2048)
CARD_MAX_BYTES = 1 << 20  # a model card is a few kB


def _bad(source, what: str) -> CacError:
    return CacError(f"{source}: {what}; the model file is corrupt or was not written by cac")


def _check_int(value, lo, hi, name, source) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(source, f"{name} is {printable(repr(value), 60)}, expected an integer in {lo}..{hi}")
    return value


def _check_float(value, lo, hi, name, source) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(source, f"{name} is {printable(repr(value), 60)}, expected a number in {lo}..{hi}")
    if not lo <= value <= hi:
        raise _bad(source, f"{name} is {value}, expected a number in {lo}..{hi}")
    return float(value)


def _check_dict(value, name, source) -> dict:
    if not isinstance(value, dict):
        raise _bad(source, f"{name} is a {type(value).__name__}, expected an object")
    return value


def validate_metadata(meta, source) -> dict:
    """Check model metadata (header or card) against the schema; returns it, or raises CacError.

    Required: ``format`` (:data:`FORMAT`), ``version`` (1..:data:`FORMAT_VERSION`)
    and ``architecture`` (``in_channels``, ``width``, ``blocks_per_stage`` and
    ``decoder_channels`` integers within :data:`ARCHITECTURE_LIMITS` and
    :data:`DECODER_CHANNEL_LIMITS`, 5 decoder stages, ``zero_init_residual``
    and the optional ``block1_pool`` booleans, the optional ``classifier_topk`` integer 0..4096, the
    optional ``inputs`` (``"frame"``, ``"frame+residual"`` with ``in_channels`` 2 or
    ``"frame+residual+vessels"`` with 3), no other
    keys).  Optional, checked when present: ``refinement``
    (``min_island_px`` 0..10^7, ``sigma`` 0..100, ``threshold`` 0..1, no other
    keys), ``classifier_threshold`` and ``cine_threshold`` 0..1, ``roi_patches`` 1..5, ``calibration`` (``temperature``
    0.05..20, ``bias`` -20..20), ``feature_statistics`` (:mod:`.ood`), ``roi_gt`` (``iterations`` 0..100,
    ``step_px`` 0..1000), ``training``/``metrics``/``patch_layout``/
    ``normalization`` objects, ``name``/``created``/``software_version``/
    ``weights_dtype`` strings.

    >>> validate_metadata(default_metadata(), "m")["format"]
    'cac-resunet18'
    """
    meta = _check_dict(meta, "the metadata", source)
    if meta.get("format") != FORMAT:
        raise CacError(
            f"{source} is a {printable(repr(meta.get('format')), 60)} model, expected {FORMAT!r}"
        )
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(source, f"format version {printable(repr(version), 40)} is not a positive integer")
    if version > FORMAT_VERSION:
        raise CacError(
            f"{source} uses model format version {version}, this software reads up to "
            f"{FORMAT_VERSION}; update the software"
        )
    if "architecture" not in meta:
        raise _bad(source, "the metadata has no architecture")
    arch = _check_dict(meta["architecture"], "architecture", source)
    unknown = sorted(set(arch) - {*ARCHITECTURE_LIMITS, "decoder_channels", "zero_init_residual", "block1_pool"}
                     - {"classifier_topk", "inputs"})
    if unknown:
        raise _bad(source, f"unsupported architecture: unknown keys {printable(', '.join(map(str, unknown)), 80)}")
    for key, (lo, hi) in ARCHITECTURE_LIMITS.items():
        if key in arch:
            _check_int(arch[key], lo, hi, f"architecture.{key}", source)
    if "decoder_channels" in arch:
        channels = arch["decoder_channels"]
        if not isinstance(channels, list) or len(channels) != 5:
            raise _bad(source, "architecture.decoder_channels is not a list of 5 integers")
        for c in channels:
            _check_int(c, *DECODER_CHANNEL_LIMITS, "architecture.decoder_channels", source)
    if "classifier_topk" in arch:
        _check_int(arch["classifier_topk"], 0, 4096, "architecture.classifier_topk", source)
    for key in ("zero_init_residual", "block1_pool"):
        if key in arch and not isinstance(arch[key], bool):
            raise _bad(source, f"architecture.{key} is not true or false")
    if "inputs" in arch:
        if arch["inputs"] not in INPUTS:
            raise _bad(source, f"architecture.inputs is {printable(repr(arch['inputs']), 40)}, "
                               f"expected one of {', '.join(map(repr, INPUTS))}")
        need = IN_CHANNELS.get(arch["inputs"])
        if need is not None and arch.get("in_channels") != need:
            raise _bad(source, f"architecture.inputs {arch['inputs']!r} needs in_channels {need}")
    if "refinement" in meta:
        refinement = _check_dict(meta["refinement"], "refinement", source)
        unknown = sorted(set(refinement) - {"min_island_px", "sigma", "threshold"})
        if unknown:
            raise _bad(source, f"refinement has unknown keys {printable(', '.join(map(str, unknown)), 80)}")
        if "min_island_px" in refinement:
            _check_int(refinement["min_island_px"], 0, 10**7, "refinement.min_island_px", source)
        if "sigma" in refinement:
            _check_float(refinement["sigma"], 0.0, 100.0, "refinement.sigma", source)
        if "threshold" in refinement:
            _check_float(refinement["threshold"], 0.0, 1.0, "refinement.threshold", source)
    if "classifier_threshold" in meta:
        _check_float(meta["classifier_threshold"], 0.0, 1.0, "classifier_threshold", source)
    if "cine_threshold" in meta:
        _check_float(meta["cine_threshold"], 0.0, 1.0, "cine_threshold", source)
    if "roi_patches" in meta:
        _check_int(meta["roi_patches"], 1, 5, "roi_patches", source)
    if "calibration" in meta:
        cal = _check_dict(meta["calibration"], "calibration", source)
        if "temperature" in cal:
            _check_float(cal["temperature"], 0.05, 20.0, "calibration.temperature", source)
        if "bias" in cal:
            _check_float(cal["bias"], -20.0, 20.0, "calibration.bias", source)
    if "feature_statistics" in meta:
        from .ood import validate_statistics

        validate_statistics(meta["feature_statistics"],
                            lambda v, lo, hi, name: _check_float(v, lo, hi, name, source),
                            lambda what: _bad(source, what))
    if "roi_gt" in meta:
        roi = _check_dict(meta["roi_gt"], "roi_gt", source)
        if "iterations" in roi:
            _check_int(roi["iterations"], 0, 100, "roi_gt.iterations", source)
        if "step_px" in roi:
            _check_int(roi["step_px"], 0, 1000, "roi_gt.step_px", source)
    for key in ("training", "metrics", "patch_layout", "normalization"):
        if key in meta:
            _check_dict(meta[key], key, source)
    for key in ("name", "created", "software_version", "weights_dtype", "weights_file"):
        if key in meta and not isinstance(meta[key], str):
            raise _bad(source, f"{key} is not a string")
    return meta


def read_card(path: str | os.PathLike) -> dict | None:
    """The model card beside a weights file, validated (:func:`validate_metadata`, ``sha256``); None if absent."""
    card = card_path(path)
    if not card.is_file():
        return None
    try:
        if card.stat().st_size > CARD_MAX_BYTES:
            raise CacError(f"model card {card} is larger than {CARD_MAX_BYTES} bytes; delete or restore it")
        data = json.loads(card.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CacError(
            f"model card {card} is unreadable ({printable(' '.join(str(exc).split()), 120)}); delete or restore it"
        ) from None
    validate_metadata(data, f"model card {card}")
    digest = data.get("sha256")
    if digest is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):
        raise CacError(f"model card {card}: sha256 is not 64 hexadecimal digits; delete or restore it")
    return data


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


def check_model_path(path: str | os.PathLike) -> Path:
    """Refuse a model path that is not valid UTF-8: the safetensors reader cannot open it (writing works).

    >>> check_model_path("models/run.safetensors").name
    'run.safetensors'
    """
    path = Path(path)
    try:
        os.fspath(path.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise CacError(f"model path {printable(str(path), 200)} is not valid UTF-8, which the safetensors reader "
                       "cannot open; rename the file (or its folder) with plain characters") from None
    return path


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

    path = check_model_path(path)  # before writing a model that could not be read back
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
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: header_json})
        except Exception as exc:  # safetensors reports an OS error as its own SafetensorError ("(os error 28)")
            raise write_error(path, exc) from None
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
        raise CacError(f"{path} is a folder, not a model file; give the path of a .safetensors model" if path.exists()
                       else f"model file {path} not found; give the path of a .safetensors model")
    check_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise CacError(
            f"{path} is not a readable safetensors model ({printable(str(exc), 120)}); re-download or re-train it"
        ) from None
    if METADATA_KEY not in header:
        raise CacError(f"{path} has no CAC metadata; it is not a model written by cac train / save_model")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CacError(
            f"{path} has corrupt metadata ({printable(str(exc), 120)}); re-download or re-train it"
        ) from None
    return validate_metadata(meta, path)


def verify_checksum(path: str | os.PathLike) -> str | None:
    """Check the weights against the sidecar card's sha256; returns the digest, or None without a card."""
    path = Path(path)
    data = read_card(path)
    expected = None if data is None else data.get("sha256")
    if not expected:
        return None
    actual = sha256_file(path)
    if actual != expected:
        raise CacError(
            f"corrupt or modified model file {path}: sha256 {actual[:12]}... does not match "
            f"{expected[:12]}... in {card_path(path).name}; re-download or re-train the model"
        )
    return actual


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, from its header (nothing is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise CacError(
            f"{path} is not a readable safetensors model ({printable(str(exc), 120)}); re-download or re-train it"
        ) from None


def _load_holding_ctrl_c(load_file, path):
    """``load_file(path)`` with Ctrl+C held until it returns, then passed on.

    A SIGINT that arrived inside safetensors' native code came out as a TypeError ("could not determine
    the shape of object type ...") and so as "not a readable model"; the interrupt is what happened.
    """
    import signal
    import threading

    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:  # not the main thread, or a handler not set from Python: leave it alone
        return load_file(str(path), device="cpu")
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        return load_file(str(path), device="cpu")
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, caught[0])  # Python's default raises KeyboardInterrupt here
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


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
        # On the meta device: shapes only, no memory, so the file's tensors are checked against the
        # architecture before anything of the architecture's size is allocated.
        with torch.device("meta"):
            skeleton = ResUNet18(**meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise CacError(f"{path}: unsupported architecture {meta['architecture']} ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = _tensor_shapes(path)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
        raise CacError(
            f"{path}: weights do not match the architecture {meta['architecture']} - {'; '.join(parts)}; "
            "the file and its metadata disagree"
        )
    try:
        tensors = _load_holding_ctrl_c(load_file, path)
    except Exception as exc:
        raise CacError(
            f"{path} is not a readable safetensors model ({printable(str(exc), 120)}); re-download or re-train it"
        ) from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CacError(
            f"{path}: weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or infinite values; "
            "the model is broken (training diverged?): re-train it or use another model"
        )
    model = ResUNet18(**meta["architecture"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    if not isinstance(device, torch.device):
        from .device import choose_device

        device = choose_device(device)  # also accepts "auto"; unavailable devices -> CacError
    model.to(device)
    model.eval()
    return model, meta
