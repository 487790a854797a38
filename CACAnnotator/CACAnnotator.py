"""CACAnnotator: annotate angiography cines with the paper's method and export them to a training dataset.

Thin Slicer glue: the panel collects the inputs into a parameter node and the
Logic hands them to ``CACAnnotatorLib.annotation`` (pair view, per-annotator
segmentations, majority vote, export through ``cac dataset add``'s code),
which is tested headless on slicer-core.
"""

import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# What the Annotator's actions import beyond Slicer's own Python (import names of CACIdentifier's
# REQUIRED_PACKAGES): pairing, comparison and the dataset export read and write cines and .seg.nrrd
# files; no torch.
ANNOTATOR_PACKAGES = ("numpy", "scipy", "skimage", "pydicom", "pylibjpeg", "nrrd", "slicerio")


class CACAnnotator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAC Annotator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Cardiac")]
        # CACIdentifier: its Lib (synchronization, metrics, file I/O) and its installer of Python packages.
        self.parent.dependencies = ["Sequences", "Segmentations", "CACIdentifier"]
        self.parent.contributors = ["SlicerCAC developers"]
        self.parent.helpText = _(
            "Annotate calcium as in De Rose et al. 2025: each annotator paints calcium on the non-contrast "
            "frames of the frame-stack volume, guided by the paired contrast frame of the same cardiac phase "
            "(pair view: paint in the left view, which shows the frame-stack volume on the frame being browsed). "
            "Combine the annotators by strict majority vote, save their segmentations as .seg.nrrd files that "
            "record their cine, compare the AI with them, and export the cine with the annotations to a dataset "
            "that CAC Trainer (cac train) reads. See docs/slicer.md and docs/dataset.md."
        )
        self.parent.acknowledgementText = _(
            "Method: De Rose et al., A multi-model deep learning approach for the identification of "
            "coronary artery calcifications within 2D coronary angiography images, Int J CARS 2025."
        )


@parameterNodeWrapper
class CACAnnotatorParameterNode:
    """The panel's state, saved with the scene: no DICOM patient attribute is kept here, but the paths below are
    kept as chosen (as Slicer's storage nodes keep their file names), so a folder named after a patient is saved too.

    cineSequence - the cine as a Sequence (its browser is the left view of the pair view).
    frameStackVolume - the cine as one volume (slice k = frame k): the annotations' geometry.
    onsetFrame - first contrast frame (0-based), -1 to detect it.
    annotatorCount - how many annotator segmentations to create.
    annotationsPath - the folder the checked annotations are saved in (.seg.nrrd with the cine's fingerprint).
    cinePath - the file or folder the cine was loaded from (for the export).
    datasetPath - the dataset folder to export to.
    aiSegmentation - the CAC Identifier's ROI segmentation to compare with the annotators.
    worstFirst - order the comparison table by IoM, lowest first.
    """

    # typing.Optional: a node field must accept None (Slicer's parameter node wrapper).
    cineSequence: Optional[vtkMRMLSequenceNode]  # noqa: UP045
    frameStackVolume: Optional[vtkMRMLScalarVolumeNode]  # noqa: UP045
    onsetFrame: Annotated[int, WithinRange(-1, 100000), Default(-1)]
    annotatorCount: Annotated[int, WithinRange(1, 9), Default(3)]
    annotationsPath: Path
    cinePath: Path
    datasetPath: Path
    aiSegmentation: Optional[vtkMRMLSegmentationNode]  # noqa: UP045
    worstFirst: bool


class CACAnnotatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CACAnnotator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CACAnnotatorLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.pairViewButton.connect("clicked(bool)", self.onPairView)
        self.ui.createAnnotatorsButton.connect("clicked(bool)", self.onCreateAnnotators)
        self.ui.majorityButton.connect("clicked(bool)", self.onMajority)
        self.ui.saveAnnotationsButton.connect("clicked(bool)", self.onSaveAnnotations)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.comparisonTableView.connect("clicked(QModelIndex)", self.onComparisonRowClicked)
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Developer mode's Reload: drop the Lib's modules too, so the next import reads the edited files."""
        for name in list(sys.modules):
            if name == "CACAnnotatorLib" or name.startswith("CACAnnotatorLib."):
                del sys.modules[name]
        super().onReload()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.stopPairView()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.stopPairView()
        self.ui.pairLabel.text = ""
        self.ui.patientLineEdit.text = ""  # it belonged to the closed scene's cine
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.cineSequence:
            sequence = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
            if sequence:
                self._parameterNode.cineSequence = sequence

    def setParameterNode(self, inputParameterNode: Optional[CACAnnotatorParameterNode]) -> None:  # noqa: UP045
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _run(self, what, function) -> None:
        """Run one action; a CacError is shown as its one line, anything else as a bug with its log."""
        from CACIdentifierLib.errors import CacError

        try:
            if not self.logic.ensurePythonPackages():
                self.ui.statusLabel.text = _("{what}: Python packages are missing.").format(what=what)
                return
            self.logic.messages = []
            with slicer.util.WaitCursor():
                message = function()
            self.ui.statusLabel.text = message or _("Done.")
            if self.logic.messages:  # the warnings of synchronization and of `cac dataset add`, never only in a log
                lines = "\n".join(_("Warning: {m}").format(m=m) for m in self.logic.messages)
                self.ui.statusLabel.text = f"{self.ui.statusLabel.text}\n{lines}"
                slicer.util.warningDisplay(lines, windowTitle=_("CAC Annotator"))
        except CacError as exc:
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("CAC Annotator"))
        except Exception as exc:  # a bug: shown in a message box too, with the traceback in the log
            logging.exception("CAC Annotator: %s failed", what)
            self.ui.statusLabel.text = _("{what} failed: {error}").format(what=what, error=exc)
            slicer.util.errorDisplay(_("{what} failed: {error}").format(what=what, error=exc),
                                     windowTitle=_("CAC Annotator"), detailedText=traceback.format_exc())

    def onPairView(self) -> None:
        p = self._parameterNode

        def show():
            view = self.logic.showPairView(p.cineSequence, None if p.onsetFrame < 0 else p.onsetFrame,
                                           p.frameStackVolume, onFrame=self.showPairNote)
            self.showPairNote(view)
            if view.volume is None:
                return _("The right view shows the paired contrast frame. Choose the frame-stack volume and show "
                         "the pair view again to paint in the left view: strokes over the cine's own frame do "
                         "not land on the frame shown.")
            return _("Browse the cine or scroll the left view: paint calcium in the left view (the frame-stack "
                     "volume, on the frame being browsed); the right view shows the paired contrast frame.")

        self._run(_("Pair view"), show)

    def showPairNote(self, view) -> None:
        """The pair line: how many frames are paired, and what the views show for the browsed frame (a contrast
        frame: no pair, the right view left empty)."""
        self.ui.pairLabel.text = _("{n} non-contrast frames paired. {note}").format(n=len(view.pairs), note=view.note)

    def onCreateAnnotators(self) -> None:
        p = self._parameterNode

        def create():
            nodes = self.logic.createAnnotators(p.frameStackVolume, p.annotatorCount)
            for node in nodes:
                self.ui.annotatorSelector.setCheckState(node, 2)  # Qt.Checked
            return _("{n} annotator segmentations ready (existing ones kept as painted); paint calcium in the "
                     "Segment Editor.").format(n=len(nodes))

        self._run(_("Create annotators"), create)

    def onMajority(self) -> None:
        p = self._parameterNode

        def vote():
            node = self.logic.majorityVote(list(self.ui.annotatorSelector.checkedNodes()), p.frameStackVolume)
            return _("Majority vote written to {name}.").format(name=node.GetName())

        self._run(_("Majority vote"), vote)

    def onSaveAnnotations(self) -> None:
        p = self._parameterNode

        def save():
            from CACAnnotatorLib.annotation import AlreadySaved

            nodes = list(self.ui.annotatorSelector.checkedNodes())
            try:
                paths = self.logic.saveAnnotations(nodes, p.frameStackVolume, p.annotationsPath)
            except AlreadySaved as exc:
                if not slicer.util.confirmOkCancelDisplay(
                        _("{names} already exist in {folder}. Replace them?").format(
                            names=", ".join(path.name for path in exc.paths), folder=exc.paths[0].parent),
                        windowTitle=_("CAC Annotator")):
                    return _("Not saved: the files in {folder} were kept as they were.").format(
                        folder=exc.paths[0].parent)
                paths = self.logic.saveAnnotations(nodes, p.frameStackVolume, p.annotationsPath, overwrite=True)
            return _("Saved {names} in {folder}.").format(names=", ".join(path.name for path in paths),
                                                          folder=paths[0].parent)

        self._run(_("Save annotations"), save)

    def onExport(self) -> None:
        p = self._parameterNode

        def export():
            from CACTrainerLib.dataset_builder import AlreadyInDataset

            # The patient's ID is read from the field, never stored in the parameter node (saved with the scene).
            arguments = (p.datasetPath, p.cinePath, list(self.ui.annotatorSelector.checkedNodes()),
                         p.frameStackVolume, None if p.onsetFrame < 0 else p.onsetFrame, self.ui.patientLineEdit.text)
            try:
                added = self.logic.exportToDataset(*arguments)
            except AlreadyInDataset as exc:
                if not slicer.util.confirmOkCancelDisplay(
                        _("This cine is already in the dataset as {id}. Replace it with these annotations?").format(
                            id=exc.acquisition), windowTitle=_("CAC Annotator")):
                    return _("Export cancelled: {id} kept as it was.").format(id=exc.acquisition)
                added = self.logic.exportToDataset(*arguments, overwrite=True)
            return self.logic.exportSummary(added)

        self._run(_("Export"), export)


    def onCompare(self) -> None:
        p = self._parameterNode

        def compare():
            table, _chart, result = self.logic.compare(p.aiSegmentation, list(self.ui.annotatorSelector.checkedNodes()),
                                                       p.frameStackVolume, p.worstFirst)
            self.ui.comparisonTableView.setMRMLTableNode(table)
            from CACAnnotatorLib import annotation

            return annotation.comparison_summary(result)

        self._run(_("Compare"), compare)

    def onComparisonRowClicked(self, index) -> None:
        table = self.ui.comparisonTableView.mrmlTableNode()
        sequence = self._parameterNode.cineSequence
        if table is None or sequence is None:
            return
        self._run(_("Show frame"), lambda: self.logic.showFrame(table, index.row(), sequence))


class CACAnnotatorLogic(ScriptedLoadableModuleLogic):
    """Forwards to ``CACAnnotatorLib.annotation``; only the view layout is done here (it needs the GUI)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.pairView = None
        self.messages = []  # the last action's warnings (synchronization, dataset add), worded for the panel

    def getParameterNode(self):
        return CACAnnotatorParameterNode(super().getParameterNode())

    @staticmethod
    def ensurePythonPackages(askConfirmation: bool = True) -> bool:
        """Install what the Annotator needs (CAC Identifier's installer, without torch); True when all is there."""
        return slicer.util.getModuleLogic("CACIdentifier").ensurePythonPackages(
            askConfirmation, names=ANNOTATOR_PACKAGES, moduleTitle=_("CAC Annotator"))

    def _require(self, node, what):
        from CACIdentifierLib.errors import CacError

        if node is None:
            raise CacError(_("Select the {what} first.").format(what=what))
        return node

    def showPairView(self, sequence, onset=None, volume=None, sliceLogics=None, onFrame=None):
        """The pair view: ``volume`` (the frame-stack volume, painted over) on the left on the browser's frame,
        the paired contrast frame on the right (left empty on a frame without a pair: a contrast frame...).
        ``sliceLogics`` (left, right): the views' ``vtkMRMLSliceLogic``, by default those of the Red and Yellow
        views of the side-by-side layout.  ``onFrame(view)`` is called each time the browsed frame changes;
        ``view.note`` says what the views show for it (the panel's pair line)."""
        from CACAnnotatorLib import annotation

        self._require(sequence, _("cine sequence"))
        self.stopPairView()
        self.pairView, self.messages = annotation.with_messages(
            annotation.pair_view_for_sequence, slicer.mrmlScene, sequence, onset, volume, onFrame)
        layoutManager = slicer.app.layoutManager() if hasattr(slicer, "app") else None
        if sliceLogics is None and layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
            sliceLogics = tuple(layoutManager.sliceWidget(name).sliceLogic() for name in ("Red", "Yellow"))
        if sliceLogics is not None:
            self.pairView.show(*sliceLogics)
            if volume is not None:
                self.pairView.keep_out_of_right_view(self._annotationNodes(volume))
        self.pairView.start()
        return self.pairView

    def _annotationNodes(self, volume):
        """The annotators' segmentations and the vote this module made for ``volume``."""
        from CACAnnotatorLib import annotation

        return [node for role in (annotation.ROLE_ANNOTATOR, annotation.ROLE_VOTE)
                for node in annotation.made_for(slicer.mrmlScene, "vtkMRMLSegmentationNode", volume, role)]

    def _keepOutOfPairView(self, nodes, volume):
        if (self.pairView is not None and self.pairView.volume is not None and volume is not None
                and self.pairView.volume.GetID() == volume.GetID()):
            self.pairView.keep_out_of_right_view(nodes)

    def stopPairView(self) -> None:
        if self.pairView is not None:
            self.pairView.stop()
            self.pairView = None

    def createAnnotators(self, volume, count):
        from CACAnnotatorLib import annotation

        nodes = annotation.create_annotator_segmentations(slicer.mrmlScene,
                                                          self._require(volume, _("frame-stack volume")), count)
        self._keepOutOfPairView(nodes, volume)
        return nodes

    def majorityVote(self, nodes, volume):
        from CACAnnotatorLib import annotation

        vote, self.messages = annotation.with_messages(annotation.majority_vote_node, slicer.mrmlScene, nodes,
                                                       self._require(volume, _("frame-stack volume")))
        self._keepOutOfPairView([vote], volume)
        return vote

    def saveAnnotations(self, nodes, volume, folder, overwrite=False):
        """Each segmentation as ``folder/<name>.seg.nrrd`` recording its cine (``CAC_source_fingerprint``), which
        Slicer's own Save does not.  Raises ``AlreadySaved`` when a file exists and ``overwrite`` is False (the
        panel asks, then passes True)."""
        from CACAnnotatorLib import annotation

        return annotation.save_annotations(nodes, self._require(volume, _("frame-stack volume")), folder,
                                           overwrite=overwrite)

    def exportToDataset(self, datasetPath, cinePath, nodes, volume, onset=None, patient=None, overwrite=False):
        """``cac dataset add`` from the panel.  ``patient``: the patient's ID for a cine without a PatientID (or
        to override it); pseudonymised in the dataset and not kept in the scene.  Raises ``AlreadyInDataset``
        when the cine is in the dataset and ``overwrite`` is False (the panel asks, then passes True)."""
        from CACAnnotatorLib import annotation
        from CACIdentifierLib.errors import CacError
        from CACTrainerLib.dataset_builder import NeedsPatient

        if str(datasetPath) in ("", ".") or str(cinePath) in ("", "."):
            raise CacError(_("Choose the cine file and the dataset folder first."))
        try:
            added, self.messages = annotation.with_messages(
                annotation.export_to_dataset, Path(datasetPath), Path(cinePath), nodes,
                self._require(volume, _("frame-stack volume")), onset=onset,
                patient=(patient or "").strip() or None, overwrite=overwrite)
            return added
        except NeedsPatient:
            raise CacError(_("{name} has no PatientID: type the patient's ID in 'Patient ID' (any ID that stays the "
                             "same for this patient's runs; the dataset keeps only a pseudonym).").format(
                name=Path(cinePath).name)) from None


    @staticmethod
    def exportSummary(added) -> str:
        """The status line after an export: "Added" or, when the cine was in the dataset already and its
        acquisition was replaced, "Replaced"; its counts and the annotators' agreement (pairwise Dice median)
        are of the frames training uses, those before the contrast onset (the non-contrast frames, where
        annotations are made); the frames marked at or after it (``contrast_annotated_frames``) are named apart."""
        if added.onset_frame is None:
            line = (_("Replaced {id}.") if added.replaced else _("Added {id}.")) + " " + _(
                "Frames training uses (all: no contrast onset): {n} annotated, {k} with calcium in the majority "
                "vote.")
        else:
            line = (_("Replaced {id}.") if added.replaced else _("Added {id}.")) + " " + _(
                "Frames training uses (before the onset at frame {onset}): {n} annotated, {k} with calcium in the "
                "majority vote.")
        line = line.format(id=added.id, n=added.annotated_frames, k=added.calcium_frames, onset=added.onset_frame)
        if added.dice_median is not None:
            line += " " + _("Annotators' agreement on those frames (pairwise Dice median): {d:.2f}.").format(
                d=added.dice_median)
        if added.contrast_annotated_frames:
            line += " " + _("Frames marked at or after the onset, not used for training: {c}.").format(
                c=added.contrast_annotated_frames)
        return line

    def compare(self, aiNode, annotatorNodes, volume, worstFirst=False):
        from CACAnnotatorLib import annotation

        return annotation.compare_with_annotators(slicer.mrmlScene, aiNode, annotatorNodes,
                                                  self._require(volume, _("frame-stack volume")),
                                                  worst_first=worstFirst)

    def showFrame(self, table, row, sequence):
        from CACAnnotatorLib import annotation
        from CACIdentifierLib import mrml

        browser = self._require(mrml.browser_of(slicer.mrmlScene, sequence), _("cine's sequence browser"))
        frame = annotation.jump_to_frame(slicer.mrmlScene, table, row, browser)
        return _("Frame {k}.").format(k=frame)


class CACAnnotatorTest(ScriptedLoadableModuleTest):
    """Majority vote on a small synthetic frame stack, in the running Slicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MajorityVote()

    def test_MajorityVote(self):
        import numpy as np
        from CACIdentifierLib import mrml
        from CACIdentifierLib.cine import Cine

        cine = Cine(frames=np.zeros((3, 32, 32), np.uint8), spacing_mm=(0.3, 0.3))
        volume = mrml.cine_to_frame_stack_volume(slicer.mrmlScene, cine, "frames")
        masks = [np.zeros((3, 32, 32), bool) for _ in range(3)]
        masks[0][1, 5:10, 5:10] = masks[1][1, 7:12, 5:10] = masks[2][1, 20:25, 20:25] = True
        nodes = [mrml.masks_to_frame_stack_segmentation(slicer.mrmlScene, {"calcium": m}, cine, f"a{i}",
                                                        reference_volume=volume) for i, m in enumerate(masks)]
        vote = CACAnnotatorLogic().majorityVote(nodes, volume)
        got = mrml.segmentation_masks(vote, (3, 32, 32))["calcium"]
        self.assertTrue(np.array_equal(got, (masks[0].astype(int) + masks[1] + masks[2]) >= 2))
        self.delayDisplay("CAC Annotator majority vote passed")
