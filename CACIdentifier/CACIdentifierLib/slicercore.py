"""The MRML scene, inside 3D Slicer or headless through the slicer-core wheel.

Inside the Slicer application :func:`get_scene` returns ``slicer.mrmlScene``
and the application's own module logics do the work.  Anywhere else (the
``cac`` command line, the tests, a plain Python script) it builds a scene the
way ``qSlicerCoreApplication`` does, with only what this project needs: an
application logic (colour tables, module-logic registry), the Sequences logic
(sequence browsers update their proxy nodes when the selected item changes)
and the Segmentations logic (segmentation storage and representation
conversions).

Only this module and :mod:`CACIdentifierLib.mrml` import ``slicer``.
"""

from __future__ import annotations

import contextlib
import io
import os

_HEADLESS_SCENE = None
# Logics must outlive the scene they observe; keep every scene's logics alive here.
_LOGICS: dict[int, dict[str, object]] = {}


def in_slicer_application() -> bool:
    """True when running inside the 3D Slicer application (``slicer.app`` exists)."""
    try:
        import slicer
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None and getattr(slicer, "mrmlScene", None) is not None


def import_slicer():
    """Import ``slicer`` (the application's or slicer-core's), with a clear error when missing."""
    from .errors import CacError

    try:
        import slicer
    except ImportError as exc:
        import importlib.util

        cause = exc
        while cause is not None:  # an interrupt during the (long) import can surface as ImportError
            if isinstance(cause, KeyboardInterrupt):  # the interrupt itself: `cac` tells Ctrl-C from SIGTERM
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        try:
            installed = importlib.util.find_spec("slicer") is not None
        except (ValueError, ImportError):
            installed = True
        if installed:
            raise CacError(
                f"slicer-core is installed but could not be imported ({exc}); reinstall it with "
                "`pip install --force-reinstall slicer-core`"
            ) from exc
        raise CacError(
            "the slicer-core package is missing; install it with `pip install slicer-core` "
            "(it is a dependency of this project: `pip install -e .`)"
        ) from exc
    if not hasattr(slicer, "vtkMRMLScene"):
        raise CacError("the installed `slicer` package has no MRML classes; reinstall slicer-core")
    return slicer


def _quiet_vtk_output() -> None:
    # VTK writes warnings to a popup window on some platforms; headless, send them to stderr.
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    window = vtkOutputWindow()
    window.SetDisplayModeToAlwaysStdErr()
    vtkOutputWindow.SetInstance(window)


def new_scene():
    """Return a new headless ``vtkMRMLScene`` with the logics this project relies on.

    The scene has a ``vtkSlicerApplicationLogic`` (with the default colour
    tables), the Sequences logic (``vtkSlicerSequencesLogic``; it observes the
    scene so that a sequence browser's proxy nodes follow its selected item)
    and the Segmentations logic (``vtkSlicerSegmentationsModuleLogic``).  The
    logics are kept alive as long as the process; use :func:`logic` to reach
    them.  Inside the Slicer application prefer :func:`get_scene`.
    """
    slicer = import_slicer()
    if not in_slicer_application():
        # Inside Slicer the output window feeds the Error Log: never replace it there.
        _quiet_vtk_output()
    scene = slicer.vtkMRMLScene()

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    # AddDefaultColorNodes prints a line per missing colour file; keep the CLI quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        color_logic.AddDefaultColorNodes()

    sequences_logic = slicer.vtkSlicerSequencesLogic()
    sequences_logic.SetMRMLApplicationLogic(app_logic)
    sequences_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Sequences", sequences_logic)

    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLApplicationLogic(app_logic)
    segmentations_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Segmentations", segmentations_logic)

    _register_segmentation_converter_rules(slicer)

    _LOGICS[id(scene)] = {
        "scene": scene,  # pins the id: a collected scene could hand its id to a new one
        "application": app_logic,
        "sequences": sequences_logic,
        "segmentations": segmentations_logic,
    }
    return scene


def _register_segmentation_converter_rules(slicer) -> None:
    # qSlicerSegmentationsModule::setup registers these in the application; headless we must.
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    ):
        if name not in present and hasattr(slicer, name):
            factory.RegisterConverterRule(getattr(slicer, name)())


def get_scene():
    """The scene to work in: ``slicer.mrmlScene`` inside Slicer, else one shared headless scene."""
    global _HEADLESS_SCENE
    if in_slicer_application():
        import slicer

        return slicer.mrmlScene
    if _HEADLESS_SCENE is None:
        _HEADLESS_SCENE = new_scene()
    return _HEADLESS_SCENE


def logic(scene, name: str):
    """The module logic ``name`` ("sequences", "segmentations", "application") serving ``scene``.

    For scenes made by :func:`new_scene` these are its own logics; for Slicer's
    scene, the application's (``slicer.modules.*.logic()``).
    """
    own = _LOGICS.get(id(scene))
    if own is not None and own["scene"] is scene:
        return own[name]
    if in_slicer_application():
        import slicer

        if name == "application":
            return slicer.app.applicationLogic()
        return getattr(slicer.modules, name).logic()
    raise KeyError(f"no {name} logic for this scene; create scenes with slicercore.new_scene()")


def temporary_directory() -> str:
    """A folder for scratch files (the system temp folder; Slicer's own inside the application)."""
    if in_slicer_application():
        import slicer

        return slicer.app.temporaryPath
    import tempfile

    return os.environ.get("CAC_TMPDIR") or tempfile.gettempdir()
