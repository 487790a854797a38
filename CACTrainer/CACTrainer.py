"""CACTrainer: phantom datasets and training of the CAC identification network from Slicer.

Thin Slicer glue: the panel's state lives in a parameter node (saved with the
scene); phantom generation and training run the ``cac`` command line
(``python -m cac``) as a separate process under ``PythonSlicer``,
through ``CACIdentifierLib.worker.ProcessRunner`` (Cancel ends its whole
process tree at once), so that Slicer stays responsive; a QTimer reads the JSON
progress lines the trainer prints on stdout into the progress bar, the log and
a training-curve plot.  The jobs import no Slicer module logic (files through
``CACIdentifierLib.nrrd_io``).
"""

import logging
import math
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
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


def _cacCommand(python, subcommand, *arguments, overwrite=False):
    """``python -m cac SUBCOMMAND ARGUMENTS...`` as a list of strings, ``--overwrite`` last when asked."""
    command = [os.fspath(python), "-m", "cac", subcommand] + [os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                                                             for a in arguments]
    return command + ["--overwrite"] if overwrite else command


def buildPhantomCommand(python, datasetDir, patients, acquisitionsPerPatient, seed, overwrite=False, randomize=False):
    """Command line of ``cac phantom`` for a dataset written into ``datasetDir``.

    ``randomize``: each patient's domain (dose, display, bits, metal, calcium look...) drawn from wide ranges.
    """
    arguments = [datasetDir, "--patients", int(patients), "--acquisitions-per-patient", int(acquisitionsPerPatient),
                 "--seed", int(seed)]
    if randomize:
        arguments.append("--randomize")
    return _cacCommand(python, "phantom", *arguments, overwrite=overwrite)


def buildTrainCommand(python, datasetDir, outputModelPath, cvMode="patient", fold=-1, epochs1=0,
                      epochs2=0, device="auto", seed=0, overwrite=False, initModelPath=None, recipe="default",
                      phantomPool=0, refreshPatients=0, resume=False, residualChannel=False,
                      counterfactualTwins=False):
    """Command line of ``cac train`` with JSON progress lines on stdout (``--json``).

    ``epochs1``/``epochs2`` of 0 leave the recipe's own (default 12 + 2, paper 100 + 100).
    ``initModelPath``: fine-tune that model (``--init``) instead of starting from random weights.
    ``phantomPool`` > 0 trains on that many phantom patients generated in memory instead of
    ``datasetDir``; ``refreshPatients`` > 0 replaces that many of them every epoch (a stream, ``--cv none`` only).
    ``resume``: continue the checkpoint a cancelled training of the same model left (``--resume``).
    ``residualChannel``: add the residual input channel (``--residual-channel``); off leaves the recipe's
    (or ``initModelPath``'s) setting.  ``counterfactualTwins``: add each calcified stream cine's calcium-free
    twin (``--counterfactual-twins``; needs ``refreshPatients``).
    """
    if cvMode not in ("patient", "acquisition", "none"):
        raise ValueError(f"unknown cross-validation mode {cvMode!r}")
    if recipe not in ("default", "paper"):
        raise ValueError(f"unknown recipe {recipe!r}")
    if int(refreshPatients) > 0 and (int(phantomPool) <= 0 or cvMode != "none"):
        raise ValueError("new patients every epoch need phantom patients and cross-validation none")
    if counterfactualTwins and int(refreshPatients) <= 0:
        raise ValueError("counterfactual twins need new phantom patients every epoch")
    arguments = [] if int(phantomPool) > 0 else [datasetDir]
    arguments += ["--out", outputModelPath, "--cv", cvMode, "--recipe", recipe]
    for flag, epochs in (("--epochs1", epochs1), ("--epochs2", epochs2)):
        if int(epochs) > 0:
            arguments += [flag, int(epochs)]
    arguments += ["--device", device, "--seed", int(seed), "--json"]
    if int(phantomPool) > 0:
        arguments += ["--phantom-pool", int(phantomPool)]
        if int(refreshPatients) > 0:
            arguments += ["--refresh-patients", int(refreshPatients)]
            if counterfactualTwins:
                arguments.append("--counterfactual-twins")
    if residualChannel:
        arguments.append("--residual-channel")
    if cvMode != "none" and fold is not None and int(fold) >= 0:
        arguments += ["--fold", int(fold)]
    if initModelPath:
        arguments += ["--init", initModelPath]
    if resume:
        arguments.append("--resume")
    return _cacCommand(python, "train", *arguments, overwrite=overwrite)


def buildCalibrateCommand(python, modelPath, dataDir, calibratedModelPath, method="platt", sensitivity=0.0,
                          overwrite=False):
    """Command line of ``cac calibrate``: calibration and activation statistics fitted on a held-out dataset.

    ``sensitivity`` in (0, 1] also chooses the operating point (``--sensitivity``); 0 keeps the model's threshold.
    """
    if method not in ("platt", "temperature", "none"):
        raise ValueError(f"unknown calibration method {method!r}")
    arguments = [modelPath, "--dataset", dataDir, "--method", method, "--out", calibratedModelPath]
    if sensitivity and float(sensitivity) > 0:
        arguments += ["--sensitivity", f"{float(sensitivity):g}"]
    return _cacCommand(python, "calibrate", *arguments, overwrite=overwrite)


#
# CACTrainer
#


class CACTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAC Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        self.parent.dependencies = ["CACIdentifier"]
        self.parent.contributors = ["SlicerCAC developers"]
        self.parent.helpText = _(
            "Generates synthetic angiography datasets with known calcium (phantoms) and trains the "
            "double-head ResUNet-18 of CAC Identifier on a dataset folder or on phantom patients generated "
            "in memory (two stages: classifier, then ROI decoder; the default recipe learns within a CPU "
            "budget, the paper recipe is De Rose et al.'s protocol), with cross-validation by patient or by "
            "acquisition. Training runs in "
            "a separate process; the curves are plotted as it goes. Calibration fits a trained model's "
            "probability, its out-of-distribution statistics and, optionally, its operating point on held-out data."
        )
        self.parent.acknowledgementText = _(
            "Method: De Rose et al., Int J CARS 2025 (two-stage training, leave-one-out cross-validation)."
        )


#
# CACTrainerParameterNode
#


@parameterNodeWrapper
class CACTrainerParameterNode:
    """The panel's state, saved with the scene.

    datasetDir - dataset folder (manifest.json, cines, annotations).
    phantomPatients, phantomAcquisitions, seed - phantom generation (seed also seeds training).
    phantomRandomize - draw each phantom patient's domain from wide ranges (what the default model trains on).
    outputModelPath - the trained model (.safetensors).
    cvMode - "patient", "acquisition" or "none"; fold - one fold (0-based) or -1 for all.
    recipe - "default" (learns within a CPU budget) or "paper" (De Rose et al.'s protocol, for a GPU).
    epochs1, epochs2 - epochs of stage 1 (classifier) and stage 2 (decoder); 0: the recipe's.
    phantomPool - train on this many phantom patients generated in memory (0: on datasetDir).
    refreshPatients - with phantomPool: new patients every epoch (a stream; cross-validation none).
    residualChannel - a second input channel, each frame minus its cine's static background.
    counterfactualTwins - with refreshPatients: each calcified stream cine again without its calcium.
    device - "auto", "cpu" or "cuda".
    initModelPath - optional model to fine-tune (empty: random initialisation).
    calibrationModelPath, calibrationDataDir - the model to calibrate and its held-out dataset.
    calibrationMethod - "platt", "temperature" or "none"; targetSensitivity - operating point (0: keep).
    calibratedModelPath - the calibrated model written (.safetensors).
    curvesTable, curvesChart - training curves of the last run.
    """

    datasetDir: Path
    phantomPatients: Annotated[int, WithinRange(1, 500), Default(14)]
    phantomAcquisitions: Annotated[int, WithinRange(1, 20), Default(3)]
    phantomRandomize: Annotated[bool, Default(True)]
    seed: Annotated[int, WithinRange(0, 2147483647), Default(0)]
    outputModelPath: Path
    cvMode: Annotated[str, Choice(["patient", "acquisition", "none"]), Default("patient")]
    fold: Annotated[int, WithinRange(-1, 10000), Default(-1)]
    recipe: Annotated[str, Choice(["default", "paper"]), Default("default")]
    epochs1: Annotated[int, WithinRange(0, 10000), Default(0)]
    epochs2: Annotated[int, WithinRange(0, 10000), Default(0)]
    phantomPool: Annotated[int, WithinRange(0, 100000), Default(0)]
    refreshPatients: Annotated[int, WithinRange(0, 100000), Default(0)]
    residualChannel: Annotated[bool, Default(False)]
    counterfactualTwins: Annotated[bool, Default(False)]
    device: Annotated[str, Choice(["auto", "cpu", "cuda"]), Default("auto")]
    initModelPath: Path
    calibrationModelPath: Path
    calibrationDataDir: Path
    calibrationMethod: Annotated[str, Choice(["platt", "temperature", "none"]), Default("platt")]
    targetSensitivity: Annotated[float, WithinRange(0.0, 1.0), Default(0.0)]
    calibratedModelPath: Path
    curvesTable: vtkMRMLTableNode
    curvesChart: vtkMRMLPlotChartNode


#
# CACTrainerWidget
#


class CACTrainerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: dataset, phantom and model paths in a parameter node; each job runs in a worker process."""

    # How often the panel reads the worker's progress lines (as CACIdentifier's panel).
    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.process = None  # a CACIdentifierLib.worker.ProcessRunner while a job runs
        self._task = ""
        self._cancelled = False
        self._stderrShown = 0
        self._epochSeconds = {}
        self._timer = None
        self._trainingOutput = None  # the model file of the training that runs, for its curve nodes
        self._curvesTable = None  # the curves table of the training that runs (not whatever a parameter node names)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CACTrainer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CACTrainerLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)
        # ctkPathLineEdit keeps its history in the application settings under these keys.
        self.ui.datasetPathLineEdit.settingKey = "CACTrainer/DatasetDir"
        self.ui.outputModelPathLineEdit.settingKey = "CACTrainer/OutputModel"
        self.ui.initModelPathLineEdit.settingKey = "CACTrainer/InitModel"
        self.ui.calibrationModelPathLineEdit.settingKey = "CACTrainer/CalibrationModel"
        self.ui.calibrationDataPathLineEdit.settingKey = "CACTrainer/CalibrationData"
        self.ui.calibratedModelPathLineEdit.settingKey = "CACTrainer/CalibratedModel"

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.generateButton.connect("clicked(bool)", self.onGenerateButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.calibrateButton.connect("clicked(bool)", self.onCalibrateButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

        self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: drop the Lib's modules too, so the next import reads the edited files."""
        for name in list(sys.modules):
            if name.split(".")[0] in ("CACTrainerLib", "cac"):  # cac: the command line beside it (train_events)
                del sys.modules[name]
        super().onReload()

    def cleanup(self) -> None:
        self.removeObservers()
        self._stopProcess()
        if self._timer is not None:
            self._timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        # The child writes a model file, not nodes: closing the scene does not throw away hours of
        # training (Cancel does).  Its curves go on in new nodes; the earlier epochs are in the log.
        if self.process is not None and self._trainingOutput is not None:
            p = self.logic.getParameterNode()
            p.curvesTable, p.curvesChart = self.logic.curveNodes(self._trainingOutput)
            self._curvesTable = p.curvesTable
            self.ui.logTextEdit.appendPlainText(_("The scene was closed; training goes on, its curves restart "
                                                  "in new nodes (earlier epochs are in this log)."))

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[CACTrainerParameterNode]) -> None:  # noqa: UP045
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.process is not None
        p = self._parameterNode
        hasDataset = bool(p and CACTrainerLogic.isSet(p.datasetDir))
        hasModel = bool(p and CACTrainerLogic.isSet(p.outputModelPath))
        self.ui.generateButton.enabled = hasDataset and not running
        hasTrainingData = hasDataset or bool(p and p.phantomPool > 0)
        self.ui.trainButton.enabled = hasTrainingData and hasModel and not running
        canCalibrate = bool(p and all(CACTrainerLogic.isSet(path) for path in (
            p.calibrationModelPath, p.calibrationDataDir, p.calibratedModelPath)))
        self.ui.calibrateButton.enabled = canCalibrate and not running
        self.ui.cancelButton.enabled = running

    # ------------------------------------------------------------------ processes

    def _guarded(self, what, function) -> None:
        """Run a button's work; an unexpected error is shown with its traceback, the panel stays usable."""
        try:
            # The jobs run `cac` in Slicer's Python: torch and the rest, installed by CAC Identifier's installer.
            if not slicer.util.getModuleLogic("CACIdentifier").ensurePythonPackages(moduleTitle=_("CAC Trainer")):
                self.ui.statusLabel.text = _("{what}: Python packages are missing.").format(what=what)
                return
            function()
        except Exception as exc:
            logging.exception("CAC Trainer: %s failed", what)
            self.ui.statusLabel.text = _("{what} failed: {error}").format(what=what, error=exc)
            slicer.util.errorDisplay(_("{what} failed: {error}").format(what=what, error=exc),
                                     windowTitle=_("CAC Trainer"), detailedText=traceback.format_exc())
            self._updateButtons()

    def onGenerateButton(self) -> None:
        self._guarded(_("Generating a phantom dataset"), self._generate)

    def _generate(self) -> None:
        p = self._parameterNode
        overwrite = False
        if p.datasetDir.exists() and any(p.datasetDir.iterdir()):
            if not slicer.util.confirmOkCancelDisplay(
                _("{path} is not empty. Replace it with a new phantom dataset?").format(path=p.datasetDir)
            ):
                return
            overwrite = True
        command = buildPhantomCommand(
            self.logic.pythonExecutable(), p.datasetDir, p.phantomPatients, p.phantomAcquisitions, p.seed, overwrite,
            randomize=p.phantomRandomize,
        )
        self._startProcess(command, _("Generating phantom dataset"))

    def onTrainButton(self) -> None:
        self._guarded(_("Training"), self._train)

    def _train(self) -> None:
        p = self._parameterNode
        problem = self.logic.trainingProblem(p.datasetDir, p.phantomPool, p.refreshPatients, p.cvMode,
                                             p.outputModelPath, p.counterfactualTwins)
        if problem:
            slicer.util.errorDisplay({
                "new patients need the phantom": _("New patients every epoch need phantom patients (more than 0) "
                                                   "and cross-validation 'none'."),
                "twins need new patients": _("Counterfactual twins are made for the new phantom patients of "
                                             "each epoch: set new patients per epoch (more than 0)."),
                "no manifest": _("{path} has no manifest.json; generate a phantom dataset or choose a dataset "
                                 "folder.").format(path=p.datasetDir),
                "model file": _("With cross-validation 'none', the output is one model: choose a .safetensors "
                                "file, not {path}.").format(path=p.outputModelPath),
                "run folder": _("With cross-validation, the output is a run folder of fold models: choose a "
                                "folder, not the model file {path}.").format(path=p.outputModelPath),
            }[problem])
            return
        source = self.logic.trainingSource(p.datasetDir, p.phantomPool, p.refreshPatients, p.seed, p.cvMode,
                                           p.counterfactualTwins)
        unfinished = self.logic.unfinishedTraining(p.outputModelPath, p.cvMode, p.fold, source)
        if unfinished:  # a training of this model was cancelled: its checkpoint can be continued
            # Made on other data, it cannot be (cac train refuses): only starting over is offered.
            other = [run for run in unfinished if run["same_data"] is False]
            resume = self._askStartOver(other, source) if other else self._askResume(unfinished)
            if resume is None:
                return
            # Resuming replaces only an older model file; starting over discards the checkpoint (--overwrite).
            overwrite = (p.cvMode == "none" and p.outputModelPath.exists()) if resume else True
        else:
            resume = False
            overwrite = self._confirmOutput(p.outputModelPath)
            if overwrite is None:
                return
        command = buildTrainCommand(
            self.logic.pythonExecutable(), p.datasetDir, p.outputModelPath, p.cvMode, p.fold,
            p.epochs1, p.epochs2, p.device, p.seed, overwrite,
            p.initModelPath if CACTrainerLogic.isSet(p.initModelPath) else None,
            recipe=p.recipe, phantomPool=p.phantomPool, refreshPatients=p.refreshPatients, resume=resume,
            residualChannel=p.residualChannel, counterfactualTwins=p.counterfactualTwins,
        )
        table, chart = self.logic.curveNodes(p.outputModelPath, p.curvesTable, p.curvesChart,
                                             keepRows=resume)
        p.curvesTable, p.curvesChart = table, chart
        self._curvesTable = table
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        self._trainingOutput = p.outputModelPath
        self._startProcess(command, _("Training"))

    @staticmethod
    def _askResume(unfinished):
        """True to resume the cancelled training, False to start it over, None to do nothing."""
        where = "; ".join(_("{folder}: stage {stage}, {epochs} epochs done").format(
            folder=run["run_dir"].name, stage="?" if run["stage"] is None else run["stage"],
            epochs="?" if run["epochs_done"] is None else run["epochs_done"])
            for run in unfinished[:4])
        answer = qt.QMessageBox.question(
            slicer.util.mainWindow(), _("Resume training"),
            _("A training of this model stopped before it finished ({where}).\n\nResume it from its checkpoint? "
              "Yes: resume. No: start over (the checkpoint is deleted). Cancel: do nothing.").format(where=where),
            qt.QMessageBox.Yes | qt.QMessageBox.No | qt.QMessageBox.Cancel, qt.QMessageBox.Yes)
        return {qt.QMessageBox.Yes: True, qt.QMessageBox.No: False}.get(answer)

    @staticmethod
    def _askStartOver(other, source):
        """False to start over a cancelled training made on other data, None to do nothing."""
        from CACTrainerLib.checkpoint_io import describe_sources

        run = other[0]
        theirs, ours = describe_sources(run["source"], source)
        text = _("A training of this model stopped before it finished ({folder}), but it was made on {theirs}; "
                 "this panel would train on {ours}, so it cannot be resumed.\n\nStart over (the checkpoint is "
                 "deleted)? To resume it instead, choose its data again.").format(
            folder=run["run_dir"].name, theirs=theirs, ours=ours)
        return False if slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Resume training")) else None

    def onCalibrateButton(self) -> None:
        self._guarded(_("Calibrating"), self._calibrate)

    def _calibrate(self) -> None:
        p = self._parameterNode
        overwrite = self._confirmDatasetAndOutput(
            p.calibrationDataDir, p.calibratedModelPath,
            _("{path} has no manifest.json; choose a held-out dataset folder.").format(path=p.calibrationDataDir))
        if overwrite is None:
            return
        command = buildCalibrateCommand(
            self.logic.pythonExecutable(), p.calibrationModelPath, p.calibrationDataDir, p.calibratedModelPath,
            p.calibrationMethod, p.targetSensitivity, overwrite,
        )
        self._startProcess(command, _("Calibrating"))

    @staticmethod
    def _confirmDatasetAndOutput(datasetDir, outputPath, missingMessage):
        """Whether to overwrite ``outputPath`` (asked when it exists); None when there is no dataset or the user declines."""
        if not (datasetDir / "manifest.json").is_file():
            slicer.util.errorDisplay(missingMessage)
            return None
        return CACTrainerWidget._confirmOutput(outputPath)

    @staticmethod
    def _confirmOutput(outputPath):
        """Whether to overwrite ``outputPath``: False when it does not exist, None when the user declines."""
        if outputPath.exists():
            return True if slicer.util.confirmOkCancelDisplay(_("Replace {path}?").format(path=outputPath)) else None
        return False

    def _startProcess(self, command, task) -> None:
        from CACIdentifierLib.worker import ProcessRunner, child_environment

        for pathLineEdit in (self.ui.datasetPathLineEdit, self.ui.outputModelPathLineEdit,
                             self.ui.initModelPathLineEdit, self.ui.calibrationModelPathLineEdit,
                             self.ui.calibrationDataPathLineEdit, self.ui.calibratedModelPathLineEdit):
            pathLineEdit.addCurrentPathToHistory()  # kept under settingKey for the next session

        self._task = task
        self.ui.logTextEdit.clear()
        self.ui.logTextEdit.appendPlainText(" ".join(command))
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress line
        self.ui.statusLabel.text = task + "..."
        self.process = ProcessRunner()
        try:
            self.process.start(command, env=child_environment())
        except OSError as exc:
            self.process = None
            self.ui.statusLabel.text = _("Could not start the Python process; see the log.")
            self.ui.logTextEdit.appendPlainText(_("Failed to start {program}: {error}").format(
                program=command[0], error=exc))
            self.ui.progressBar.setRange(0, 1000)
            self._updateButtons()
            return
        self._stderrShown = 0
        self._epochSeconds = {}  # stage -> its epochs' seconds so far, for the time left
        self._timer.start()
        self._updateButtons()

    def onTimer(self) -> None:
        """Read the child's output (QTimer); finish when it has exited."""
        process = self.process
        if process is None:
            self._timer.stop()
            return
        for line in process.read_lines():
            self._handleLine(line)
        stderr = process.stderr_text().splitlines()
        for line in stderr[self._stderrShown:]:
            if line.strip():
                self.ui.logTextEdit.appendPlainText(line)
        self._stderrShown = len(stderr)
        if process.finished():
            self.onFinished(process.returncode)

    def _handleLine(self, line) -> None:
        from cac.train_events import parse_line, progress_fraction, time_left

        event = parse_line(line)
        if event is None:
            if line.strip():
                self.ui.logTextEdit.appendPlainText(line)
            return
        kind = event.get("event", "epoch" if "epoch" in event else "")
        if kind == "epoch":
            fraction = progress_fraction(event)
            if fraction is not None:
                self.ui.progressBar.setRange(0, 1000)
                self.ui.progressBar.value = int(round(fraction * 1000))
            # The running training's own table: a scene loaded meanwhile may bring a parameter node
            # that names another model's curves.
            table = self._curvesTable
            if table is not None and slicer.mrmlScene.IsNodePresent(table):
                self.logic.appendCurveRow(table, event)
            self.ui.statusLabel.text = _("{task}: stage {stage}, epoch {epoch}/{epochs}").format(
                task=self._task, stage=event.get("stage", "?"), epoch=event.get("epoch", "?"),
                epochs=event.get("epochs", "?"),
            ) + time_left(self._epochSeconds, event)
        elif kind == "fold":
            fold = event.get("fold")
            self.ui.statusLabel.text = _("{task}: fold {fold} of {folds}").format(
                task=self._task, fold=fold + 1 if isinstance(fold, int) else "?", folds=event.get("folds", "?"))
        elif "done" in event or "total" in event:
            total = event.get("total")
            done = event.get("done")
            if isinstance(total, (int, float)) and isinstance(done, (int, float)) and total > 0:
                self.ui.progressBar.setRange(0, 1000)
                self.ui.progressBar.value = int(round(1000 * min(done / total, 1.0)))
        self.ui.logTextEdit.appendPlainText(line.strip())

    def onFinished(self, exitCode) -> None:
        self._timer.stop()
        cancelled = self._cancelled
        self._cancelled = False
        ok = exitCode == 0 and not cancelled
        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.value = 1000 if ok else 0
        if cancelled:
            self.ui.statusLabel.text = _("{task}: cancelled.").format(task=self._task)
        elif ok:
            self.ui.statusLabel.text = _("{task}: done.").format(task=self._task)
        else:
            self.ui.statusLabel.text = _("{task}: stopped (exit code {code}); see the log.").format(
                task=self._task, code=exitCode
            )
        self.process = None
        self._trainingOutput = None
        self._curvesTable = None
        self._updateButtons()

    def onCancelButton(self) -> None:
        self.ui.statusLabel.text = _("{task}: cancelling...").format(task=self._task)
        self._stopProcess()

    def _stopProcess(self) -> None:
        """Kill the child's process tree (PythonSlicer and the Python it starts); returns at once.

        ``cac`` takes the SIGTERM as an interrupt (SIGKILL follows after a few
        seconds): files being written are removed, and a training keeps the
        checkpoint of its last finished epoch, which **Train** then offers to
        resume (``--resume``).  The timer notices the exit and updates the panel.
        """
        if self.process is None:
            return
        self._cancelled = True
        self.process.kill()


#
# CACTrainerLogic
#


class CACTrainerLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CACTrainerParameterNode(super().getParameterNode())

    @staticmethod
    def isSet(path) -> bool:
        """A path parameter is unset when empty (the wrapper stores Path("") as ".")."""
        return path is not None and str(path) not in ("", ".")

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (sets up the library paths), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    # Attribute of a curves table: the model file whose training it shows.
    CURVES_FOR = "CAC_curves_for"

    @staticmethod
    def createCurveNodes(scene=None, name="CAC training curves"):
        """A table with one row per epoch and a chart of its loss, F1, AUC and IoM columns."""
        from cac.train_events import CURVE_COLUMNS
        from CACIdentifierLib import mrml

        scene = scene or slicer.mrmlScene
        table = mrml.table_from_columns(scene, name, {column: [] for column in CURVE_COLUMNS})
        chart = mrml.plot_from_table(scene, table, "step", CURVE_COLUMNS[3:], title=_("Training curves"),
                                     x_label=_("epoch (stage 1, then stage 2)"), y_label=_("loss / F1 / AUC / IoM"))
        chart.SetName(f"{name} chart")
        return table, chart

    @staticmethod
    def outputNeeded(outputModelPath, cvMode="none"):
        """None when ``outputModelPath`` suits this cross-validation mode, else what it must be instead:
        "model file" (``cvMode`` none) or "run folder".

        ``cac train`` refuses the same (a model is one file, a cross-validation run a folder of folds);
        checked here so that the panel says it before the child process starts.
        """
        isModelFile = Path(outputModelPath).suffix.lower() == ".safetensors"
        if cvMode == "none" and not isModelFile:
            return "model file"
        if cvMode != "none" and isModelFile:
            return "run folder"
        return None

    @classmethod
    def trainingProblem(cls, datasetDir, phantomPool=0, refreshPatients=0, cvMode="none", outputModelPath="",
                        counterfactualTwins=False):
        """Why a training with these settings cannot start, or None: "new patients need the phantom"
        (``refreshPatients`` without phantom patients, or with cross-validation), "twins need new patients"
        (``counterfactualTwins`` without ``refreshPatients``), "no manifest" (a dataset folder without
        ``manifest.json``), "model file" or "run folder" (:meth:`outputNeeded`).

        The panel asks before it starts the child process, where ``cac train`` would refuse the same; it
        words the answer (translated) itself.
        """
        if refreshPatients > 0 and (phantomPool <= 0 or cvMode != "none"):
            return "new patients need the phantom"
        if counterfactualTwins and refreshPatients <= 0:
            return "twins need new patients"
        if phantomPool <= 0 and not (Path(datasetDir) / "manifest.json").is_file():
            return "no manifest"
        return cls.outputNeeded(outputModelPath, cvMode)

    @staticmethod
    def trainingSource(datasetDir, phantomPool=0, refreshPatients=0, seed=0, cvMode="none",
                       counterfactualTwins=False):
        """What a training with these settings trains on, as its checkpoint records it (``data_source``)."""
        from CACTrainerLib.checkpoint_io import data_source

        return data_source(None if phantomPool > 0 else datasetDir, phantom_pool=phantomPool,
                           refresh_patients=refreshPatients, seed=seed, cv=cvMode,
                           twins=bool(counterfactualTwins and phantomPool > 0))

    @staticmethod
    def unfinishedTraining(outputModelPath, cvMode="none", fold=-1, source=None):
        """Checkpoints a cancelled training of ``outputModelPath`` left
        (``[{"run_dir", "stage", "epochs_done", "source", "same_data"}]``); with cross-validation and a chosen
        ``fold`` (>= 0), that fold's only: the one Train would run.  ``same_data``: whether the checkpoint was made
        on ``source`` (``trainingSource``), None when it does not say or no source is given."""
        from CACTrainerLib.checkpoint_io import same_source, unfinished_runs

        if not CACTrainerLogic.isSet(outputModelPath):
            return []
        runs = unfinished_runs(Path(outputModelPath), cvMode)
        if cvMode != "none" and fold is not None and int(fold) >= 0:
            runs = [run for run in runs if run["run_dir"].name == f"fold_{int(fold)}"]
        for run in runs:
            run["same_data"] = same_source(run["source"], source)
        return runs

    @classmethod
    def curveNodes(cls, outputModelPath, table=None, chart=None, scene=None, keepRows=False):
        """The curves table and chart for a training that writes ``outputModelPath``.

        ``table``/``chart`` (the last run's, from the parameter node) are emptied and
        reused when they show an earlier training of the same model file (``keepRows``:
        not emptied, for a resumed training that goes on from its last epoch); otherwise
        new ones are made, so that another model's curves stay for comparison and
        retraining one model does not pile up nodes.  A table of an older version, with
        other columns, is not reused (its rows could not take the new values).
        """
        from cac.train_events import CURVE_COLUMNS

        scene = scene or slicer.mrmlScene
        key = os.fspath(outputModelPath)
        series = chart.GetNthPlotSeriesNode(0) if chart is not None and chart.GetNumberOfPlotSeriesNodes() else None
        if (table is not None and series is not None and scene.IsNodePresent(table) and scene.IsNodePresent(chart)
                and series.GetTableNode() is table and table.GetAttribute(cls.CURVES_FOR) == key
                and [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == CURVE_COLUMNS):
            if not keepRows:
                table.GetTable().SetNumberOfRows(0)
                table.GetTable().Modified()
                table.Modified()
            return table, chart
        table, chart = cls.createCurveNodes(scene, f"CAC training curves ({Path(key).name})")
        table.SetAttribute(cls.CURVES_FOR, key)
        return table, chart

    @staticmethod
    def appendCurveRow(table, event) -> None:
        """Append one epoch event to the curves table (NaN where a value is missing)."""
        from cac.train_events import curve_row
        from CACIdentifierLib import mrml

        row = curve_row(event)
        row["step"] = table.GetNumberOfRows() + 1
        mrml.append_table_row(table, row)


#
# CACTrainerTest
#


class CACTrainerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ProgressLines()
        self.setUp()
        self.test_CurveTable()

    def test_ProgressLines(self):
        from cac.train_events import parse_line, progress_fraction

        self.delayDisplay("JSON progress lines")
        event = parse_line('{"event": "epoch", "stage": 2, "epoch": 5, "epochs": 10, "train_loss": 0.3}')
        self.assertEqual(event["stage"], 2)
        self.assertAlmostEqual(progress_fraction(event), 0.75)
        self.assertIsNone(parse_line("Epoch 5 done"))
        self.assertIsNone(parse_line('{"broken": '))
        command = buildTrainCommand("python", "/data", "/out/m.safetensors", "patient", 3, 2, 2, "cpu", 7)
        self.assertEqual(command[command.index("--fold") + 1], "3")
        stream = buildTrainCommand("python", "", "/out/m.safetensors", "none", recipe="paper", phantomPool=60,
                                   refreshPatients=10)
        self.assertEqual(stream[stream.index("--recipe") + 1], "paper")
        self.assertNotIn("--epochs1", stream)
        self.delayDisplay("Test passed")

    def test_CurveTable(self):
        self.delayDisplay("Training curves table and chart")
        table, chart = CACTrainerLogic.createCurveNodes()
        for epoch in (1, 2, 3):
            CACTrainerLogic.appendCurveRow(table, {"event": "epoch", "stage": 1, "epoch": epoch, "epochs": 3,
                                                  "train_loss": 1.0 / epoch, "val_f1": 0.5})
        self.assertEqual(table.GetNumberOfRows(), 3)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 4)
        self.assertTrue(math.isnan(table.GetTable().GetValueByName(0, "val_iom").ToDouble()))
        self.delayDisplay("Test passed")
