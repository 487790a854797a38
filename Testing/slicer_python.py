"""Slicer 5.10.0's own Python code (parameterNodeWrapper, ScriptedLoadableModule, util, i18n) over slicer-core.

The slicer-core wheel gives the real MRML classes but not the pure-Python part
of Slicer's ``slicer`` package; ``../shared/slicer-5.10.0-python/`` holds those
files unchanged from Slicer's tag v5.10.0.  :func:`slicer_5_10` puts them under
the ``slicer`` package for the duration of a test, with ``slicer.mrmlScene`` a
real slicer-core scene, so that a module script (``CACIdentifier.py``) is
loaded and its parameter node driven by the very code Slicer runs.

``qt``, ``ctk`` and the ``slicer.q*`` widget classes exist only inside the
application.  They are stood in by empty classes: enough for Slicer's files to
import (they subclass ``qt.QColor`` and name ``slicer.qMRMLNodeComboBox`` at
module level), and nothing the parameter-node code under test calls.  No part of the project is replaced.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICER_PYTHON = ROOT.parent / "shared" / "slicer-5.10.0-python" / "slicer"
SLICER_SUBMODULES = ("i18n", "util", "parameterNodeWrapper", "ScriptedLoadableModule")
# The application's widget classes that Slicer's files name at module level (annotations, base classes).
SLICER_WIDGET_CLASSES = ("qMRMLNodeComboBox", "qMRMLRangeWidget", "qMRMLScreenShotDialog", "qMRMLSliderWidget",
                         "qMRMLSpinBox", "qMRMLUtils", "qMRMLWidget", "qSlicerWidget")


def available() -> bool:
    return (SLICER_PYTHON / "parameterNodeWrapper" / "wrapper.py").is_file()


class _QtStandIn(types.ModuleType):
    """A module whose attributes are empty classes (``qt.QWidget``, ``ctk.ctkPathLineEdit``...)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {"__module__": self.__name__})
        setattr(self, name, cls)
        return cls


def _forget(prefix: str) -> dict:
    removed = {}
    for name in list(sys.modules):
        if name == prefix or name.startswith(prefix + "."):
            removed[name] = sys.modules.pop(name)
    return removed


@contextlib.contextmanager
def slicer_5_10(scene):
    """Yield the ``slicer`` package with Slicer 5.10.0's Python files and ``slicer.mrmlScene = scene``.

    Everything is put back afterwards (modules, attributes, ``slicer.__path__``).
    """
    import slicer

    saved_modules = {}
    saved_attrs = {name: getattr(slicer, name, None)
                   for name in (*SLICER_SUBMODULES, *SLICER_WIDGET_CLASSES, "mrmlScene")}
    saved_path = list(slicer.__path__)
    for name in ("qt", "ctk"):
        if importlib.util.find_spec(name) is None:
            saved_modules[name] = sys.modules.get(name)
            sys.modules[name] = _QtStandIn(name)
    for name in SLICER_SUBMODULES:
        saved_modules.update(_forget(f"slicer.{name}"))
    # Slicer's own files first: its util.py replaces slicer-core's for the test.
    slicer.__path__[:] = [str(SLICER_PYTHON), *saved_path]
    slicer.mrmlScene = scene
    for name in SLICER_WIDGET_CLASSES:
        if saved_attrs[name] is None:
            setattr(slicer, name, type(name, (), {"__module__": "slicer"}))
    try:
        for name in SLICER_SUBMODULES:
            setattr(slicer, name, importlib.import_module(f"slicer.{name}"))
        yield slicer
    finally:
        for name in SLICER_SUBMODULES:
            _forget(f"slicer.{name}")
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        slicer.__path__[:] = saved_path
        for name, value in saved_attrs.items():
            if value is None:
                with contextlib.suppress(AttributeError):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)


def load_module_script(path: Path, name: str | None = None):
    """Import a scripted module file (``CACIdentifier/CACIdentifier.py``) as Slicer does, by path."""
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(f"_slicer_module_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
