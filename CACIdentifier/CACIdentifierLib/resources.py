"""Files shipped with the extension: where the default model is found (without importing torch).

The one model finder for the command line, the scene Logic and the Slicer
panel (which calls it while its panel is built, before torch may even be
installed).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CacError

DEFAULT_MODEL_NAME = "cac_default.safetensors"
MODEL_ENV = "CAC_MODEL"


def _shipped_model_candidates() -> list[Path]:
    here = Path(__file__).resolve().parent  # .../CACIdentifier/CACIdentifierLib
    return [
        here.parents[1] / "Resources" / "Models" / DEFAULT_MODEL_NAME,  # repository / extension root
        here.parent / "Resources" / "Models" / DEFAULT_MODEL_NAME,  # inside the module folder
    ]


def find_default_model() -> Path | None:
    """The default model if there is one, else None (the one finder: CLI, Slicer panel, scene Logic).

    ``$CAC_MODEL`` if set (even when it names a missing file: :func:`default_model_path`
    then says so), else ``Resources/Models/cac_default.safetensors`` beside the
    ``CACIdentifier`` module folder (the repository / extension root) or inside it.
    """
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env).expanduser()
    return next((path for path in _shipped_model_candidates() if path.is_file()), None)


def default_model_path() -> Path:
    """The shipped default model (:func:`find_default_model`); :class:`CacError` saying where it looked if none."""
    path = find_default_model()
    if path is not None and not path.is_file():
        raise CacError(f"${MODEL_ENV} points to {path}, which does not exist; fix it or unset it")
    if path is None:
        raise CacError(
            f"no default model found (looked for {_shipped_model_candidates()[0]}); pass --model MODEL.safetensors "
            f"or set ${MODEL_ENV}"
        )
    return path
