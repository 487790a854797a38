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


def is_shipped_model_location(path) -> bool:
    r"""Whether ``path`` names the shipped model's place in some install (``.../Resources/Models/`` + its name).

    A scene saved with the panel's default model records the absolute path of
    that install's copy; on another computer, or after the extension was
    updated, the path is gone but means "the shipped model".

    >>> is_shipped_model_location("/old/Slicer/CACIdentifier/Resources/Models/cac_default.safetensors")
    True
    >>> is_shipped_model_location("C:\\Slicer\\CACIdentifier\\Resources\\Models\\cac_default.safetensors")
    True
    >>> is_shipped_model_location("/home/me/models/cac_default.safetensors")
    False
    """
    from pathlib import PureWindowsPath

    text = str(path)
    parts = PureWindowsPath(text).parts if "\\" in text else Path(text).parts  # a scene saved on Windows
    return len(parts) >= 3 and tuple(parts[-3:]) == ("Resources", "Models", DEFAULT_MODEL_NAME)


def default_model_path() -> Path:
    """The shipped default model (:func:`find_default_model`); :class:`CacError` saying where it looked if none."""
    path = find_default_model()
    if path is not None and path.is_dir():
        raise CacError(f"${MODEL_ENV} points to the folder {path}, not to a model file (.safetensors); fix it or unset it")
    if path is not None and not path.is_file():
        raise CacError(f"${MODEL_ENV} points to {path}, which does not exist; fix it or unset it")
    if path is None:
        raise CacError(
            f"no default model found (looked for {_shipped_model_candidates()[0]}); pass --model MODEL.safetensors "
            f"or set ${MODEL_ENV}"
        )
    return path
