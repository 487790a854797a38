"""CACIdentifier: regions of interest of coronary artery calcification in X-ray angiography cines.

Thin Slicer glue (De Rose et al., Int J CARS 2025): the panel collects the
inputs into a parameter node (saved with the scene) and the logic hands them
to ``CACIdentifierLib`` (synchronization, double-head ResUNet-18, refinement),
which does all the work.  Python packages the Lib needs are checked when the
user clicks Apply and installed only after the user agrees.
"""

import importlib
import importlib.util
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# (import name, distribution, minimum version, pip requirement) of what CACIdentifierLib needs
# beyond Slicer's own Python. torch first: the PyTorch Utils extension installs the build that
# matches the GPU. pydicom: Slicer bundles 2.4.4 (its DICOM module imports it at start-up), and the
# Lib works with 2.4 and 3.x, so Slicer's own is never replaced.
REQUIRED_PACKAGES = [
    ("torch", "torch", "2.0", "torch"),
    ("safetensors", "safetensors", "0.4", "safetensors>=0.4"),
    ("numpy", "numpy", "1.26", "numpy>=1.26"),
    ("scipy", "scipy", "1.11", "scipy>=1.11"),
    ("skimage", "scikit-image", "0.22", "scikit-image>=0.22"),
    ("SimpleITK", "SimpleITK", "2.3", "SimpleITK>=2.3"),
    ("pydicom", "pydicom", "2.4", "pydicom>=2.4,<4"),
    ("pylibjpeg", "pylibjpeg", "2.0", "pylibjpeg>=2.0 pylibjpeg-libjpeg>=2.1 pylibjpeg-rle>=2.0"),
    ("nrrd", "pynrrd", "1.0", "pynrrd>=1.0"),
    ("slicerio", "slicerio", "1.4", "slicerio>=1.4"),
    ("matplotlib", "matplotlib", "3.7", "matplotlib>=3.7"),
]


def _versionTuple(text):
    """(major, minor) of a version string such as "2.13.0+cpu"; (0, 0) when unreadable."""
    parts = []
    for piece in str(text).split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))


#
# CACIdentifier
#


# What developer Reload of this module drops from sys.modules: its Lib and everything that imports it.
RELOADED_WITH_IDENTIFIER = ("CACIdentifierLib", "CACAnnotatorLib", "CACTrainerLib", "cac")


class CACIdentifier(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAC Identifier")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = ["Sequences", "Segmentations"]
        self.parent.contributors = ["SlicerCAC developers"]
        self.parent.helpText = _(
            "Finds regions of interest (ROIs) of coronary artery calcification on the non-contrast "
            "frames of an X-ray coronary angiography cine: each non-contrast frame is paired with a "
            "contrast frame of the same cardiac phase, a double-head ResUNet-18 classifies and "
            "localizes calcium on five 256x256 patches, and the ROIs are refined. "
            "Load the cine (DICOM, .seq.nrrd or a frame-stack .nrrd), choose it as input and click Apply."
        )
        self.parent.acknowledgementText = _(
            "Method: De Rose et al., A multi-model deep learning approach for the identification of "
            "coronary artery calcifications within 2D coronary angiography images, Int J CARS 2025."
        )


#
# CACIdentifierParameterNode
#


def _setting(value, kind):
    """A setting for the worker: None when unset or negative (the panel's "model's" or "auto")."""
    return None if value is None or value < 0 else kind(value)


@parameterNodeWrapper
class CACIdentifierParameterNode:
    """The panel's state, saved with the scene.

    inputNode - the cine: a Sequence of 2D frames or a frame-stack volume (slice k = frame k).
    annotationNodes - annotators' segmentations over the frame-stack volume (optional, for IoM/HD).
    modelPath - a .safetensors model; empty means the model shipped with the extension.
    device - "auto", "cpu" or "cuda".
    sigma - Gaussian sigma of the ROI refinement, in pixels.
    minIslandPx - ROI islands smaller than this (pixels) are removed.
    threshold - threshold of the smoothed ROI map, 0-1.
    (sigma, minIslandPx, threshold: -1, shown as "model's", takes the model card's value: a model's
    operating point may set its own island size.)
    onsetFrame - first contrast frame (0-based), -1 for automatic detection.
    temporal - keep only ROIs that recur across beats at the same cardiac phase (``cac identify --temporal``).
    cineGate - apply the model card's cine threshold, if it has one (off: ``cac identify --no-cine-gate``).
    staticFilter - remove ROIs on dark spots that stay on the same pixels through the run (detector marks,
    in a run whose heartbeat synchronization found; off: ``cac identify --keep-static``).
    roiPatches - draw each frame's ROI from at most this many of its most probable gated patches, 1-5
    (``cac identify --roi-patches``); 0, shown as "model's", takes the model card's value.
    outputSegmentation, outputTable - created when empty.
    """

    # typing.Union, not `|`: the parameter node wrapper inspects typing.Union. A Union of node
    # types must include None (Slicer's docs), else the wrapper cannot write the initial None.
    inputNode: Union[vtkMRMLSequenceNode, vtkMRMLScalarVolumeNode, None]  # noqa: UP007
    annotationNodes: list[vtkMRMLSegmentationNode]
    modelPath: Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"]), Default("auto")]
    sigma: Annotated[float, WithinRange(-1.0, 50.0), Default(-1.0)]
    minIslandPx: Annotated[int, WithinRange(-1, 1000000), Default(-1)]
    threshold: Annotated[float, WithinRange(-1.0, 1.0), Default(-1.0)]
    onsetFrame: Annotated[int, WithinRange(-1, 100000), Default(-1)]
    temporal: Annotated[bool, Default(False)]
    cineGate: Annotated[bool, Default(True)]
    staticFilter: Annotated[bool, Default(True)]
    roiPatches: Annotated[int, WithinRange(0, 5), Default(0)]
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode


#
# CACIdentifierWidget
#


class CACIdentifierWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs in a parameter node; Apply starts the worker process, and turns into Cancel."""

    # How often the panel reads the worker's progress lines.
    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CACIdentifier.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CACIdentifierLogic()
        self.ui.progressBar.hide()
        # ctkPathLineEdit keeps its history in the application settings under this key.
        self.ui.modelPathLineEdit.settingKey = "CACIdentifier/ModelPath"
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        # The checkable combo box is synced by hand: the wrapper has no connector for it.
        self.ui.annotationSelector.connect("checkedNodesChanged()", self.onAnnotationsChanged)

        self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: drop the Lib's modules too, so the next import reads the edited files.

        The Libs and the command line built on CACIdentifierLib go as well: kept, they would hold the old
        module's classes (an old CacError is not the new one, and the other panels would show user errors
        as bugs)."""
        for name in list(sys.modules):
            if name.split(".")[0] in RELOADED_WITH_IDENTIFIER:
                del sys.modules[name]
        super().onReload()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None:
            self._job.cancel()
            self._job.cleanup()  # the scratch folder goes once the worker has ended
            self._job = None
        if self._timer is not None:
            self._timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputNode:
            sequence = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
            if sequence:
                self._parameterNode.inputNode = sequence
        # An unset Path parameter reads as "."; show the shipped model instead.  A scene saved with another
        # install's shipped model (another computer, an updated extension) gets this install's.
        from CACIdentifierLib.resources import is_shipped_model_location

        path = self._parameterNode.modelPath
        if str(path) in ("", ".") or (not path.exists() and is_shipped_model_location(path)):
            default = self.logic.defaultModelPath()
            if default is not None:
                self._parameterNode.modelPath = default

    def setParameterNode(self, inputParameterNode: Optional[CACIdentifierParameterNode]) -> None:  # noqa: UP045
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._restoreAnnotationChecks()
            self._checkCanApply()

    def _restoreAnnotationChecks(self) -> None:
        wasBlocked = self.ui.annotationSelector.blockSignals(True)
        checked = {node.GetID() for node in self._parameterNode.annotationNodes if node}
        for i in range(self.ui.annotationSelector.nodeCount()):
            node = self.ui.annotationSelector.nodeFromIndex(i)
            state = qt.Qt.Checked if node.GetID() in checked else qt.Qt.Unchecked
            self.ui.annotationSelector.setCheckState(node, state)
        self.ui.annotationSelector.blockSignals(wasBlocked)

    def onAnnotationsChanged(self) -> None:
        if self._parameterNode:
            self._parameterNode.annotationNodes = list(self.ui.annotationSelector.checkedNodes())

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running identification (its process is ended).")
            return
        ready = bool(self._parameterNode and self._parameterNode.inputNode)
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.text = _("Apply")
        self.ui.applyButton.toolTip = (
            _("Find the CAC ROIs in the input cine.") if ready else _("Select an input cine first.")
        )

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.onCancel()
            return
        if not self.logic.ensurePythonPackages():
            self.ui.statusLabel.text = _("Missing Python packages were not installed; nothing was done.")
            return
        from CACIdentifierLib.errors import CacError

        p = self._parameterNode
        self.ui.modelPathLineEdit.addCurrentPathToHistory()  # kept under settingKey for the next session
        try:
            with slicer.util.WaitCursor():
                self._job = self.logic.startIdentification(
                    p.inputNode, list(p.annotationNodes), p.modelPath, p.device, p.sigma, p.minIslandPx,
                    p.threshold, p.onsetFrame, outputSegmentation=p.outputSegmentation, outputTable=p.outputTable,
                    temporal=p.temporal, cineGate=p.cineGate, roiPatches=p.roiPatches,
                    staticFilter=p.staticFilter,
                )
        except CacError as exc:  # the user's input: one line saying what to do
            self._job = None
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("CAC Identifier"))
            return
        except Exception as exc:  # a bug: shown, with the traceback in the log, and the panel stays usable
            self._job = None
            logging.exception("CAC identification could not start")
            self.ui.statusLabel.text = _("Failed: {error}").format(error=exc)
            slicer.util.errorDisplay(_("The identification could not start: {error}").format(error=exc),
                                     windowTitle=_("CAC Identifier"), detailedText=traceback.format_exc())
            return
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Starting the worker process...")
        self._checkCanApply()
        self._timer.start()

    def onTimer(self) -> None:
        """Read the worker's progress; load its results once it has finished."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        for event in job.poll():
            if event.get("event") == "progress":
                total, done = int(event.get("total") or 1), int(event.get("done") or 0)
                self.ui.progressBar.setRange(0, max(total, 1))
                self.ui.progressBar.value = done
                if event.get("message"):
                    self.ui.statusLabel.text = event["message"]
        if job.finished:
            self._finish(job)

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()  # kills the worker's process tree; returns at once
            self.ui.statusLabel.text = _("Cancelled.")
            self._finish(self._job)

    def _finish(self, job) -> None:
        from CACIdentifierLib.errors import CacError
        from CACIdentifierLib.progress import Cancelled

        self._timer.stop()
        self._job = None
        try:
            if not job.cancelled:
                with slicer.util.WaitCursor():
                    self._showResult(job.load_results())
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled.")
        except CacError as exc:
            self.ui.statusLabel.text = str(exc).splitlines()[0]
            slicer.util.errorDisplay(str(exc).splitlines()[0], windowTitle=_("CAC Identifier"),
                                     detailedText=job.runner.stderr_text())
        except Exception as exc:  # a bug: show it and keep the traceback in the log
            logging.exception("CAC identification failed")
            self.ui.statusLabel.text = _("Failed: {error}").format(error=exc)
            slicer.util.errorDisplay(_("Identification failed: {error}").format(error=exc),
                                     windowTitle=_("CAC Identifier"),
                                     detailedText=traceback.format_exc() + "\n" + job.runner.stderr_text())
        finally:
            job.cleanup()
            self.ui.progressBar.hide()
            self._checkCanApply()

    def _showResult(self, result) -> None:
        """Select the outputs the Logic loaded and show a one-line summary.

        The selectors then show this run's nodes: the chosen ones, or new ones where
        the chosen held another cine's results (they are kept, never refilled).
        """
        segmentation = _resultItem(result, "roi_segmentation", "segmentation_node")
        table = _resultItem(result, "table", "table_node")
        if segmentation is not None:
            self._parameterNode.outputSegmentation = segmentation
        if table is not None:
            self._parameterNode.outputTable = table
        if table is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        self.ui.statusLabel.text = summaryText(_resultItem(result, "report"), _resultItem(result, "summary"))


def _resultItem(result, *keys):
    """``result[key]`` or ``result.key`` for the first key present (the Lib returns a dict)."""
    for key in keys:
        if isinstance(result, dict) and result.get(key) is not None:
            return result[key]
        if getattr(result, key, None) is not None:
            return getattr(result, key)
    return None


def summaryText(report, summary) -> str:
    """The status label's text from the identification report (``cac identify``'s report.json): one line,
    then each of the report's warnings on a line of its own (synchronization's, and the one saying the cine
    lies outside the model's training data first: the terminal shows them, the panel must too)."""

    def number(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    parts = []
    frames = (report or {}).get("frames") or []
    if frames:
        withRoi = sum(1 for row in frames if (row.get("roi_area_mm2") or 0) > 0)
        parts.append(_("{n} non-contrast frames, CAC ROI in {k}").format(n=len(frames), k=withRoi))
    params = (report or {}).get("parameters") or {}
    if params.get("cine_gate_withheld"):
        parts.append(_("no ROI drawn: the cine's evidence {e} is below the model's cine threshold {c}").format(
            e=number(params.get("cine_evidence"), 3), c=number(params.get("cine_threshold"), 3)))
    if params.get("static_rois_removed"):
        parts.append(_("{n} ROIs on spots that never move removed").format(n=int(params["static_rois_removed"])))
    if report and report.get("heart_rate_bpm") is not None:
        parts.append(_("heart rate {bpm} bpm").format(bpm=number(report["heart_rate_bpm"], 0)))
    if summary:
        iom, hd = summary.get("iom") or {}, summary.get("hd_mm") or {}
        parts.append(_("IoM {m} ({q1}-{q3}), HD {hm} ({hq1}-{hq3}) mm").format(
            m=number(iom.get("median")), q1=number(iom.get("q1")), q3=number(iom.get("q3")),
            hm=number(hd.get("median"), 1), hq1=number(hd.get("q1"), 1), hq3=number(hd.get("q3"), 1)))
        # IoM divides by the smaller area (a ROI over everything scores 1): its size, precision and the
        # frames it flags wrongly stand beside it (issue 12, item 4).
        precision, area = summary.get("roi_precision") or {}, summary.get("roi_area_pct_field") or {}
        detection = summary.get("detection") or {}
        if precision or area:
            parts.append(_("ROI precision {p}, ROI area {a} % of the field").format(
                p=number(precision.get("median")), a=number(area.get("median"))))
        if detection:
            parts.append(_("frames with calcium found {se}, calcium-free frames clean {sp}").format(
                se=number(detection.get("sensitivity")), sp=number(detection.get("specificity"))))
    text = "; ".join(parts) + "." if parts else _("Done.")
    warnings = list((report or {}).get("distribution_warnings") or []) + list((report or {}).get("warnings") or [])
    return text + "".join("\n" + _("Warning: {warning}").format(warning=w) for w in warnings)


#
# CACIdentifierLogic
#


class CACIdentifierLogic(ScriptedLoadableModuleLogic):
    """Runs the identification in a worker process (``cac identify --progress-json`` under PythonSlicer)
    and loads its outputs as nodes; usable from the Python console without the widget.

    ``runnerFactory`` (a callable returning a ``CACIdentifierLib.worker.ProcessRunner``) and ``python``
    are injected by tests; by default a subprocess runner and Slicer's ``PythonSlicer``.

    >>> logic = slicer.util.getModuleLogic("CACIdentifier")   # doctest: +SKIP
    >>> logic.process(slicer.util.getNode("cine sequence"))   # doctest: +SKIP
    """

    # Packages Slicer itself bundles: never installed or replaced from here (its DICOM module uses pydicom).
    BUNDLED_WITH_SLICER = ("numpy", "scipy", "pydicom")
    MINIMUM_TORCH = "2.0"

    def __init__(self, runnerFactory=None, python=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.runnerFactory = runnerFactory
        self.python = python

    def getParameterNode(self):
        return CACIdentifierParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ packages

    @staticmethod
    def missingPackages(names=None) -> list:
        """(import name, pip requirement) of each required package (of ``names`` only, when given) that is
        absent or too old."""
        from importlib import metadata

        missing = []
        for name, distribution, minimum, requirement in REQUIRED_PACKAGES:
            if names is not None and name not in names:
                continue
            if importlib.util.find_spec(name) is None:
                missing.append((name, requirement))
                continue
            try:
                installed = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue  # importable but not pip-managed (bundled with Slicer): trust it
            if _versionTuple(installed) < _versionTuple(minimum):
                missing.append((name, requirement))
        return missing

    def ensurePythonPackages(self, askConfirmation: bool = True, names=None, moduleTitle=None) -> bool:
        """Install what is missing after the user agrees; True when everything is there.

        ``names`` (import names) limits it to what a caller needs: CAC Annotator
        needs no torch, CAC Trainer everything (its jobs run ``cac``); ``moduleTitle``
        is the module named in the messages.

        torch comes from the PyTorch Utils extension (the build that matches the GPU),
        the others from pip, one at a time, only if missing or too old; what Slicer bundles
        is never replaced.  A failure is shown in a message box with pip's log; when an
        already imported package was upgraded, a restart is offered.
        """
        missing = self.missingPackages(names)
        if not missing:
            return True
        title = moduleTitle or _("CAC Identifier")
        bundled = [name for name, _req in missing if name in self.BUNDLED_WITH_SLICER]
        if bundled:
            slicer.util.errorDisplay(
                _("This Slicer's {names} is missing or too old for {module}, and Slicer's own copy is "
                  "never replaced: use Slicer 5.10 or later.").format(names=", ".join(bundled), module=title),
                windowTitle=title)
            return False
        listed = ", ".join(name for name, _req in missing)  # `names` stays the caller's selection
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("{module} needs these Python packages: {names}. Install them now? "
              "This may take several minutes.").format(names=listed, module=title),
            windowTitle=_("Install Python packages"),
        ):
            return False
        upgraded = [name for name, _req in missing if name in sys.modules]
        log = []
        try:
            with slicer.util.WaitCursor():
                for name, requirement in missing:
                    if name == "torch":
                        self.installTorch()
                    else:
                        self._pipInstall(requirement.split(), log)
        except Exception as exc:
            logging.exception("Installing Python packages failed")
            slicer.util.errorDisplay(
                _("Could not install {names}: {error}").format(names=listed, error=exc),
                windowTitle=_("Install Python packages"), detailedText="\n".join(log) or str(exc))
            return False
        importlib.invalidate_caches()
        if upgraded and slicer.util.confirmYesNoDisplay(
            _("{names} were upgraded while an older version was loaded. Restart Slicer now?").format(
                names=", ".join(upgraded)), windowTitle=_("Restart Slicer")):
            slicer.util.restart()
            return False
        still = self.missingPackages(names)
        if still:
            slicer.util.errorDisplay(
                _("Could not install: {names}.").format(names=", ".join(name for name, _req in still)),
                windowTitle=_("Install Python packages"), detailedText="\n".join(log))
        return not still

    @classmethod
    def installTorch(cls):
        """torch through the PyTorch Utils extension (an EXTENSION_DEPENDS of this extension)."""
        try:
            import PyTorchUtils
        except ImportError as exc:
            raise RuntimeError(_("the PyTorch extension is missing; install it with the Extensions Manager")) from exc
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=f">={cls.MINIMUM_TORCH}")
        if torch is None:
            raise RuntimeError(_("PyTorch Utils did not install torch"))
        return torch

    @staticmethod
    def _pipInstall(requirements, log) -> None:
        """``pip install`` in Slicer's Python with the output kept for the error message."""
        import subprocess

        log.append("$ pip install " + " ".join(requirements))
        process = slicer.util.launchConsoleProcess(
            [shutil.which("PythonSlicer") or sys.executable, "-m", "pip", "install", *requirements],
            useStartupEnvironment=False)
        for line in iter(process.stdout.readline, ""):
            log.append(line.rstrip())
            slicer.app.processEvents()
        if process.wait() != 0:
            raise subprocess.CalledProcessError(process.returncode, "pip install " + " ".join(requirements))

    # ------------------------------------------------------------------ identification

    @staticmethod
    def defaultModelPath() -> Optional[Path]:  # noqa: UP045
        """The default model (``$CAC_MODEL`` or the shipped one), None if there is none: the Lib's one finder."""
        from CACIdentifierLib.resources import find_default_model

        path = find_default_model()
        return path if path is not None and path.is_file() else None

    @staticmethod
    def resolveInput(inputNode):
        """The cine node to process: a browser's proxy volume stands for its whole sequence."""
        from CACIdentifierLib.mrml import sequence_behind

        if inputNode is not None and inputNode.IsA("vtkMRMLScalarVolumeNode"):
            return sequence_behind(inputNode) or inputNode
        return inputNode

    def _modelPath(self, modelPath):
        from CACIdentifierLib.errors import CacError
        from CACIdentifierLib.resources import is_shipped_model_location

        modelPath = Path(modelPath) if modelPath not in (None, "") else None
        if modelPath is not None and (str(modelPath) in ("", ".") or modelPath.is_dir()):
            modelPath = None
        if modelPath is not None and not modelPath.exists() and is_shipped_model_location(modelPath):
            # A scene saved elsewhere names another install's shipped model: this install's is meant.
            logging.info("CAC Identifier: %s is not here; using this install's shipped model", modelPath)
            modelPath = None
        if modelPath is None:
            modelPath = self.defaultModelPath()
            if modelPath is None:
                raise CacError(_("no model file given and no shipped model found; choose a .safetensors model"))
        if not modelPath.is_file():
            raise CacError(_("model file {path} not found; choose a .safetensors model").format(path=modelPath))
        return modelPath

    def _jobArguments(self, inputNode, annotationNodes, modelPath, device, sigma, minIslandPx, threshold,
                      onsetFrame, outputSegmentation, outputTable, temporal=False, cineGate=True,
                      roiPatches=0, staticFilter=True) -> dict:
        from CACIdentifierLib.errors import CacError

        if inputNode is None:
            raise CacError(_("no input cine selected; load a cine and choose it as input"))
        return dict(
            input_node=self.resolveInput(inputNode),
            annotation_nodes=list(annotationNodes or []),
            model_path=os.fspath(self._modelPath(modelPath)),
            device=device,
            # None (unset or negative: the panel's "model's") lets the worker take the model card's value.
            sigma=_setting(sigma, float),
            min_island_px=_setting(minIslandPx, int),
            threshold=_setting(threshold, float),
            onset_frame=_setting(onsetFrame, int),
            temporal=bool(temporal),
            cine_gate=bool(cineGate),
            roi_patches=int(roiPatches) if roiPatches and int(roiPatches) > 0 else None,  # 0: the card's
            static_filter=bool(staticFilter),
            output_segmentation=outputSegmentation,
            output_table=outputTable,
            runner=self.runnerFactory() if self.runnerFactory else None,
            python=self.python,
        )

    def startIdentification(self, inputNode, annotationNodes=None, modelPath=None, device: str = "auto",
                            sigma: float | None = None, minIslandPx: int | None = None, threshold: float | None = None,
                            onsetFrame: int = -1, outputSegmentation=None, outputTable=None,
                            temporal: bool = False, cineGate: bool = True, roiPatches: int = 0,
                            staticFilter: bool = True):
        """Start the worker on ``inputNode`` and return its ``CACIdentifierLib.logic.IdentifyJob`` at once.

        The caller polls ``job.poll()`` (progress events), then calls ``job.load_results()``
        once ``job.finished``; ``job.cancel()`` kills the worker's process tree.
        """
        # Imported here, not at module load: the Lib needs packages that may have just been installed.
        cacLogic = importlib.import_module("CACIdentifierLib.logic")
        arguments = self._jobArguments(inputNode, annotationNodes, modelPath, device, sigma, minIslandPx,
                                       threshold, onsetFrame, outputSegmentation, outputTable, temporal, cineGate,
                                       roiPatches, staticFilter)
        job = cacLogic.IdentifyJob(slicer.mrmlScene, **arguments)
        job.start()
        return job

    def process(self, inputNode, annotationNodes=None, modelPath=None, device: str = "auto", sigma: float | None = None,
                minIslandPx: int | None = None, threshold: float | None = None, onsetFrame: int = -1, progress=None,
                outputSegmentation=None, outputTable=None, temporal: bool = False, cineGate: bool = True,
                roiPatches: int = 0, staticFilter: bool = True):
        """Identify CAC ROIs in ``inputNode`` through the worker process and put the results in the scene.

        Blocks until the worker has finished (the panel uses :meth:`startIdentification` instead).

        :param inputNode: Sequence of 2D frames, its proxy volume, or a frame-stack volume.
        :param annotationNodes: annotators' segmentations over the frame-stack volume, or None.
        :param modelPath: .safetensors model; None/empty for the shipped default.
        :param sigma, minIslandPx, threshold: refinement settings; None or negative for the model card's.
        :param onsetFrame: first contrast frame (0-based); -1 or None to detect it.
        :param temporal: keep only ROIs that recur across beats (``cac identify --temporal``).
        :param cineGate: apply the model card's cine threshold if it has one (False: ``--no-cine-gate``).
        :param roiPatches: each frame's ROI from at most this many most probable gated patches (1-5); 0 for the card's.
        :param staticFilter: remove ROIs on spots that never move (False: ``cac identify --keep-static``).
        :param progress: ``progress(done, total, message)``; may raise progress.Cancelled (the worker is killed).
        :return: dict with ``roi_sequence``, ``roi_segmentation``, ``table``, ``report``, ``summary``.
        """
        cacLogic = importlib.import_module("CACIdentifierLib.logic")
        arguments = self._jobArguments(inputNode, annotationNodes, modelPath, device, sigma, minIslandPx,
                                       threshold, onsetFrame, outputSegmentation, outputTable, temporal, cineGate,
                                       roiPatches, staticFilter)

        def keepResponsive(done, total, message=""):
            if getattr(slicer, "app", None) is not None:
                slicer.app.processEvents()
            if progress is not None:
                progress(done, total, message)

        return cacLogic.identify_in_scene(slicer.mrmlScene, progress=keepResponsive, **arguments)


#
# CACIdentifierTest
#


class CACIdentifierTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a synthetic cine through the MRML round trip, the panel's parameter
    node, then Apply through the worker process on a small phantom cine with calcium."""

    # The shipped model draws no ROI on noise and warns that it is unlike its training data
    # (test_NoiseNoRoi), but still gives it a CAC probability above 0.5 (issue 12).  Until a model that
    # passes is shipped, test_NoiseProbability is reported as an expected failure, not hidden.
    NOISE_KNOWN_FAILURE = "issue 12"
    NOISE_PROBABILITY_MAX = 0.5

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CineRoundTrip()
        self.setUp()
        self.test_SegNrrdRoundTrip()
        self.setUp()
        self.test_Identify()
        self.setUp()
        self.test_NoiseNoRoi()
        self.setUp()
        try:
            self.test_NoiseProbability()
        except AssertionError as exc:
            self.delayDisplay(f"Expected failure ({self.NOISE_KNOWN_FAILURE}): {exc}")

    def _syntheticCine(self):
        import numpy as np
        from CACIdentifierLib.cine import Cine

        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, size=(8, 64, 80)).astype(np.uint8)
        return Cine(frames=frames, frame_time_ms=66.7, spacing_mm=(0.3, 0.3), spacing_source="test")

    def test_CineRoundTrip(self):
        self.delayDisplay("Cine -> Sequence -> cine")
        import numpy as np
        from CACIdentifierLib import mrml

        cine = self._syntheticCine()
        sequence, browser = mrml.cine_to_sequence(slicer.mrmlScene, cine, "CAC test cine")
        back = mrml.sequence_to_cine(sequence)
        self.assertTrue(np.array_equal(back.frames, cine.frames))
        browser.SetSelectedItemNumber(5)
        proxy = browser.GetProxyNode(sequence)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(proxy)[0], cine.frames[5]))
        volume = mrml.cine_to_frame_stack_volume(slicer.mrmlScene, cine, "CAC test frames")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volume), cine.frames))
        self.assertIs(CACIdentifierLogic.resolveInput(proxy), sequence)
        self.delayDisplay("Test passed")

    def test_SegNrrdRoundTrip(self):
        self.delayDisplay("Masks -> .seg.nrrd -> Slicer")
        import numpy as np
        from CACIdentifierLib import mrml, nrrd_io

        cine = self._syntheticCine()
        masks = np.zeros(cine.frames.shape, bool)
        masks[2, 10:20, 30:40] = True
        path = os.path.join(slicer.app.temporaryPath, "CACIdentifierTest.seg.nrrd")
        nrrd_io.write_seg_nrrd(path, {"calcium": masks}, cine.spacing_mm, overwrite=True)
        segmentation = slicer.util.loadSegmentation(path)
        volume = mrml.cine_to_frame_stack_volume(slicer.mrmlScene, cine, "CAC test frames")
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.modules.segmentations.logic().ExportVisibleSegmentsToLabelmapNode(segmentation, labelmap, volume)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(labelmap) > 0, masks))
        self.delayDisplay("Test passed")

    def _applyInPanel(self, inputNode, keepOutputs=False):
        """Set the panel's parameter node like a user, click Apply, wait for the worker; return the widget.

        ``keepOutputs`` leaves the output selectors as the last run left them (a user who only changes the input).
        """
        import time

        widget = slicer.modules.cacidentifier.widgetRepresentation().self()
        slicer.util.selectModule("CACIdentifier")
        parameters = widget._parameterNode
        parameters.inputNode = inputNode
        parameters.device = "cpu"
        if not keepOutputs:
            parameters.outputSegmentation = None
            parameters.outputTable = None
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.onApplyButton()
        self.assertIsNotNone(widget._job, "Apply did not start the worker")
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        deadline = time.monotonic() + 900
        while widget._job is not None and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNone(widget._job, "the worker did not finish in 15 minutes")
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        return widget

    def test_Identify(self):
        logic = CACIdentifierLogic()
        if logic.missingPackages() or logic.defaultModelPath() is None:
            self.delayDisplay("Skipping identification: packages or shipped model missing")
            return
        self.delayDisplay("Apply on a phantom cine with calcium, through the worker process")
        import numpy as np
        from CACIdentifierLib import mrml
        from CACTrainerLib.phantom import PhantomParams, generate_acquisition

        acq = generate_acquisition(PhantomParams(n_frames=32, calcium_mu_per_mm=0.25), seed=11, patient=2,
                                   calcium_free=False)
        sequence, browser = mrml.cine_to_sequence(slicer.mrmlScene, acq.to_cine(), "CAC test phantom")
        widget = self._applyInPanel(sequence)
        parameters = widget._parameterNode
        self.assertIsNotNone(parameters.outputSegmentation)
        self.assertIsNotNone(parameters.outputTable)
        roi = next(iter(mrml.segmentation_masks(parameters.outputSegmentation, shape=acq.frames.shape).values()))
        self.assertTrue((roi & acq.calcium).any(), "the ROI does not overlap the phantom's calcium")
        self.assertEqual(browser.GetNumberOfSynchronizedSequenceNodes(), 1)
        # A second Apply replaces the ROI sequence in the browser instead of adding one.
        widget = self._applyInPanel(sequence)
        self.assertEqual(browser.GetNumberOfSynchronizedSequenceNodes(), 1)
        # Apply on another cine with the outputs still selected: the first cine's results stay as they were.
        first, firstRoi = parameters.outputSegmentation, roi.copy()
        other = generate_acquisition(PhantomParams(n_frames=32, calcium_mu_per_mm=0.25), seed=12, patient=3,
                                     calcium_free=False)
        otherSequence, _browser = mrml.cine_to_sequence(slicer.mrmlScene, other.to_cine(), "CAC test phantom 2")
        widget = self._applyInPanel(otherSequence, keepOutputs=True)
        self.assertIsNot(widget._parameterNode.outputSegmentation, first)
        kept = next(iter(mrml.segmentation_masks(first, shape=acq.frames.shape).values()))
        self.assertTrue(np.array_equal(kept, firstRoi), "the second cine's run changed the first one's ROI")
        self.delayDisplay("Test passed")

    def _noiseReport(self):
        """The report on a cine of uniform noise, or None (with a message) without packages or model."""
        logic = CACIdentifierLogic()
        if logic.missingPackages() or logic.defaultModelPath() is None:
            self.delayDisplay("Skipping: packages or shipped model missing")
            return None
        import numpy as np
        from CACIdentifierLib import mrml
        from CACIdentifierLib.cine import Cine

        frames = np.random.default_rng(0).integers(0, 255, size=(24, 256, 256)).astype(np.uint8)
        sequence, _browser = mrml.cine_to_sequence(
            slicer.mrmlScene, Cine(frames=frames, frame_time_ms=66.7, spacing_mm=(0.3, 0.3)), "CAC test noise")
        return logic.process(sequence, device="cpu", onsetFrame=12)["report"]

    def test_NoiseNoRoi(self):
        """Noise gets no ROI, and the report warns that it lies outside the model's training data."""
        report = self._noiseReport()
        if report is None:
            return
        self.assertEqual(report["roi_summary"]["frames_with_roi"], 0, str(report["roi_summary"]))
        self.assertTrue(any("outside the model's training data" in w for w in report["distribution_warnings"]),
                        str(report["distribution_warnings"]))

    def test_NoiseProbability(self):
        """Noise must get a low CAC probability from whatever model is shipped."""
        report = self._noiseReport()
        if report is None:
            return
        highest = max(row["probability"] for row in report["frames"])
        self.assertLess(highest, self.NOISE_PROBABILITY_MAX, f"noise got a CAC probability of {highest}")
