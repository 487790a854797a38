"""The CAC Annotator Logic: the paper's annotation method on MRML nodes, headless-testable.

The paper's annotators marked calcium on the *non-contrast* frames, guided by
the *contrast* frame of the same cardiac phase.  This Logic gives the panel:

- :class:`PairView`: a second sequence browser on the cine that always shows
  the contrast frame paired with the frame selected in the cine's own browser
  (pairs from :func:`CACIdentifierLib.sync.synchronize`), following it as the
  user browses; the panel shows the two proxy volumes side by side.
- :func:`create_annotator_segmentations`: one empty "annotator N"
  segmentation per annotator over the frame-stack volume (the geometry of the
  project's ``.seg.nrrd`` files), ready for the Segment Editor.
- :func:`majority_vote_node`: the strict majority of the selected
  annotators' segmentations into the volume's vote node; the inputs are not modified.

A second click never piles up nodes: the annotator segmentations, the vote and
the comparison made for a volume are marked (``CAC_role``, ``CAC_made_for``)
and found again; existing annotators are kept as drawn, the vote and the
comparison are recomputed in place.
- :func:`export_to_dataset`: the annotators' segmentations and the cine into
  a dataset through :func:`CACTrainerLib.dataset_builder.add_acquisition`,
  the code behind ``cac dataset add``.

MRML work goes through :mod:`CACIdentifierLib.mrml` (node <-> array
conversions); only browser and node bookkeeping is done here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from CACIdentifierLib.errors import CacError

PAIR_BROWSER_NAME = "CAC paired contrast"


def pair_table(pairs) -> dict[int, int]:
    """``{non-contrast frame: contrast frame}`` from a sync result's ``pairs`` (list of [nc, c])."""
    return {int(a): int(b) for a, b in pairs}


def pairs_for_sequence(sequence_node, onset: int | None = None) -> dict[int, int]:
    """Synchronize the cine held by ``sequence_node`` and return its :func:`pair_table`."""
    from CACIdentifierLib import mrml
    from CACIdentifierLib.sync import synchronize

    cine = mrml.sequence_to_cine(sequence_node)
    result = synchronize(cine.frames, cine.frame_time_ms, onset=onset, r_wave_frames=cine.r_wave_frames)
    return pair_table(result.pairs)


class PairView:
    """A second browser that shows the contrast frame paired with the cine browser's selected frame.

    ``pairs`` is ``{non-contrast: contrast}``.  On a frame without a pair
    (contrast frames, blank frames) the paired browser stays where it was and
    :attr:`current_pair` is None.  :meth:`start` follows the cine browser
    through a MRML observer; :meth:`update` does the same once (tests, or a
    panel without observers).

    >>> # view = PairView(scene, sequence, pairs); view.start(); view.proxy  # the right-hand volume
    """

    def __init__(self, scene, sequence_node, pairs: dict[int, int], browser=None):
        from CACIdentifierLib import mrml

        self.scene = scene
        self.sequence = sequence_node
        self.pairs = dict(pairs)
        self.browser = browser or mrml.browser_of(scene, sequence_node)
        if self.browser is None:
            raise CacError("the cine has no sequence browser; load it as a sequence first")
        self.paired = None
        for node in scene.GetNodesByClass("vtkMRMLSequenceBrowserNode"):
            mrml.upgrade_link(node, mrml.REF_PAIR_OF_BROWSER)  # a scene saved by an earlier development build
            if node.GetNodeReferenceID(mrml.REF_PAIR_OF_BROWSER) == self.browser.GetID():
                self.paired = node  # reuse: one pair browser per cine browser
        if self.paired is None:
            self.paired = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", PAIR_BROWSER_NAME)
            # A node reference (Slicer renames it when the scene is imported into another), and an
            # attribute that stays if the cine's browser is deleted: browser_of never takes this one.
            self.paired.SetNodeReferenceID(mrml.REF_PAIR_OF_BROWSER, self.browser.GetID())
            self.paired.SetAttribute(mrml.REF_PAIR_OF_BROWSER, "yes")
            self.paired.SetAndObserveMasterSequenceNodeID(sequence_node.GetID())
            # Its own proxy node, so that the left view keeps the cine browser's frame.
            self.paired.SetSaveChanges(sequence_node, False)
        self._tag = None
        self.current_pair = None
        self.update()

    @property
    def proxy(self):
        """The volume node showing the paired contrast frame."""
        return self.paired.GetProxyNode(self.sequence)

    def update(self, *_args) -> int | None:
        """Move the paired browser to the pair of the cine browser's frame; return that contrast frame."""
        from CACIdentifierLib import slicercore

        frame = int(self.browser.GetSelectedItemNumber())
        self.current_pair = self.pairs.get(frame)
        if self.current_pair is not None and self.paired.GetSelectedItemNumber() != self.current_pair:
            self.paired.SetSelectedItemNumber(self.current_pair)
        slicercore.logic(self.scene, "sequences").UpdateProxyNodesFromSequences(self.paired)
        return self.current_pair

    def start(self) -> None:
        """Follow the cine browser (an observer on its Modified event)."""
        if self._tag is None:
            self._tag = self.browser.AddObserver("ModifiedEvent", self.update)

    def stop(self) -> None:
        if self._tag is not None:
            self.browser.RemoveObserver(self._tag)
            self._tag = None


ROLE_ANNOTATOR, ROLE_VOTE = "annotator", "majority vote"
ROLE_COMPARISON, ROLE_COMPARISON_CHART = "comparison", "comparison chart"
CALCIUM_COLOR = (0.95, 0.85, 0.1)


def made_for(scene, class_name: str, volume_node, role: str, name: str | None = None) -> list:
    """The nodes of ``class_name`` this module made for ``volume_node`` in ``role`` (and named ``name``)."""
    from CACIdentifierLib import mrml
    from CACIdentifierLib.nrrd_io import ATTR_ROLE

    return [node for node in scene.GetNodesByClass(class_name)
            if node.GetAttribute(ATTR_ROLE) == role and mrml.is_made_for(node, volume_node)
            and (name is None or node.GetName() == name)]


def _mark(node, volume_node, role: str):
    from CACIdentifierLib import mrml
    from CACIdentifierLib.nrrd_io import ATTR_ROLE

    node.SetAttribute(ATTR_ROLE, role)
    mrml.mark_made_for(node, volume_node)
    if node.IsA("vtkMRMLTransformableNode"):  # segmentations lie over the volume as shown (tables do not move)
        mrml.place_under_transform_of(volume_node.GetScene(), node, volume_node)
    return node


def create_annotator_segmentations(scene, volume_node, count: int = 3, names=None) -> list:
    """``count`` segmentations ("annotator 1".."annotator N", one "calcium" segment each) over
    the frame-stack ``volume_node``, whose geometry they take (also as the Segment Editor's source).

    Those already made for this volume are returned as they are (with what was
    painted in them); only the missing ones are created.
    """
    from CACIdentifierLib import mrml

    if count < 1:
        raise CacError("create at least one annotator segmentation")
    cine = mrml.frame_stack_volume_to_cine(volume_node)
    names = list(names) if names else [f"annotator {i + 1}" for i in range(count)]
    empty = np.zeros(cine.frames.shape, bool)
    out = []
    for name in names:
        existing = made_for(scene, "vtkMRMLSegmentationNode", volume_node, ROLE_ANNOTATOR, name)
        out.append(existing[0] if existing else _mark(mrml.masks_to_frame_stack_segmentation(
            scene, {"calcium": empty}, cine, name, colors={"calcium": CALCIUM_COLOR},
            reference_volume=volume_node), volume_node, ROLE_ANNOTATOR))
    return out


def annotator_masks(nodes, shape, ijk_to_ras=None) -> list[np.ndarray]:
    """Each segmentation node's calcium (union of its segments) as ``shape`` (frames, rows, cols) bool
    (on the grid ``ijk_to_ras`` of the frame-stack volume where a node has no reference geometry)."""
    from CACIdentifierLib import mrml

    out = []
    for node in nodes:
        segments = mrml.segmentation_masks(node, shape, ijk_to_ras)
        if not segments:
            raise CacError(f"segmentation {node.GetName()!r} has no segments; paint calcium first")
        masks = [np.asarray(m, bool) for m in segments.values()]
        for m in masks:
            if m.shape != tuple(shape):
                raise CacError(f"segmentation {node.GetName()!r} is not over this cine's frame-stack volume")
        out.append(np.any(np.stack(masks), axis=0))
    return out


def majority_vote_node(scene, nodes, volume_node, name: str = "majority vote"):
    """The strict majority of ``nodes`` (more than half mark a pixel) as the volume's vote node.

    The vote made earlier for this volume under ``name`` is recomputed in place
    (one vote per volume, however often the button is pressed); a new node is
    made when there is none, or when that node is among ``nodes``.  The inputs
    are read, never modified.
    """
    from CACIdentifierLib import mrml
    from CACIdentifierLib.metrics import majority_vote

    if not nodes:
        raise CacError("select the annotators' segmentations to combine")
    cine = mrml.frame_stack_volume_to_cine(volume_node)
    grid = mrml.frame_stack_geometry(volume_node)
    mrml.check_same_cine(nodes, volume_node, cine)
    masks = annotator_masks(nodes, cine.frames.shape, grid)
    vote = {"calcium": majority_vote(masks)}
    inputs = {node.GetID() for node in nodes}
    for node in made_for(scene, "vtkMRMLSegmentationNode", volume_node, ROLE_VOTE, name):
        if node.GetID() not in inputs:
            return _mark(mrml.refill_segmentation(node, vote, cine, {"calcium": CALCIUM_COLOR}, grid), volume_node,
                         ROLE_VOTE)
    return _mark(mrml.masks_to_frame_stack_segmentation(scene, vote, cine, name, colors={"calcium": CALCIUM_COLOR},
                                                        reference_volume=volume_node), volume_node, ROLE_VOTE)


def export_to_dataset(dataset, cine_path, nodes, volume_node, *, patient: str | None = None,
                      onset: int | None = None, key_file=None, overwrite: bool = False):
    """Add the cine file ``cine_path`` and the annotators' segmentation ``nodes`` to ``dataset``.

    The nodes are written as ``.seg.nrrd`` files in a temporary folder and
    handed to :func:`CACTrainerLib.dataset_builder.add_acquisition` (the code
    of ``cac dataset add``: same checks, pseudonyms and layout).  Returns its
    :class:`~CACTrainerLib.dataset_builder.Added`.
    """
    from CACIdentifierLib import mrml, nrrd_io
    from CACTrainerLib.dataset_builder import add_acquisition

    cine = mrml.frame_stack_volume_to_cine(volume_node)
    mrml.check_same_cine(nodes, volume_node, cine)
    masks = annotator_masks(nodes, cine.frames.shape, mrml.frame_stack_geometry(volume_node))
    with tempfile.TemporaryDirectory(prefix="cac-annotations-") as tmp:
        paths = []
        for i, m in enumerate(masks):
            path = Path(tmp) / f"annotator{i + 1}.seg.nrrd"
            nrrd_io.write_seg_nrrd(path, {"calcium": m}, cine.spacing_mm, source_fingerprint=cine.fingerprint())
            paths.append(path)
        return add_acquisition(dataset, cine_path, paths, patient=patient, onset=onset, key_file=key_file,
                               overwrite=overwrite)


# --------------------------------------------------------------------------- AI against the annotators

COMPARISON_COLUMNS = ("frame", "IoM", "HD (mm)", "ROI area (mm2)", "ROI area (%)", "ROI precision",
                      "AI calcium", "annotators calcium", "annotators with calcium", "agree")


def compare_with_annotators(scene, roi_node, annotator_nodes, volume_node, *, worst_first: bool = False,
                            name: str = "CAC AI vs annotators"):
    """The AI's ROI segmentation against the annotators' majority vote, frame by frame, as a table and a plot.

    The rows are :func:`CACIdentifierLib.metrics.evaluate_masks`'s (frames
    where the AI or the majority marks something; ``cac evaluate`` gives the
    same table), with how many annotators marked calcium.  ``worst_first``
    orders the rows by IoM, lowest first (frames where one side marks nothing
    have IoM 0).  Returns ``(table_node, chart_node, result)``; the chart plots
    IoM and ROI precision over the frames.  The comparison made earlier for this
    volume under ``name`` is refilled (its chart follows), not duplicated.
    """
    from CACIdentifierLib import mrml
    from CACIdentifierLib.metrics import evaluate_masks, majority_vote

    if roi_node is None or not annotator_nodes:
        raise CacError("select the AI's ROI segmentation and the annotators' segmentations to compare")
    cine = mrml.frame_stack_volume_to_cine(volume_node)
    shape = cine.frames.shape
    grid = mrml.frame_stack_geometry(volume_node)
    mrml.check_same_cine([roi_node, *annotator_nodes], volume_node, cine)
    roi = annotator_masks([roi_node], shape, grid)[0]
    masks = annotator_masks(annotator_nodes, shape, grid)
    result = evaluate_masks(roi, majority_vote(masks), cine.spacing_mm)
    rows = result["frames"]
    for row in rows:
        row["annotators_with_calcium"] = int(sum(bool(m[row["index"]].any()) for m in masks))
    if worst_first:
        rows = sorted(rows, key=lambda r: (r["iom"] if r["iom"] is not None else 2.0, r["index"]))
    keys = ("index", "iom", "hd_mm", "roi_area_mm2", "roi_area_pct", "roi_precision", "ai_calcium",
            "truth_calcium", "annotators_with_calcium", "agree")
    columns = {c: [r[k] for r in rows] for c, k in zip(COMPARISON_COLUMNS, keys)}
    for c in ("AI calcium", "annotators calcium", "agree"):
        columns[c] = ["yes" if v else "no" for v in columns[c]]
    table = mrml.table_from_columns(scene, name, columns)
    earlier = made_for(scene, "vtkMRMLTableNode", volume_node, ROLE_COMPARISON, name)
    if earlier:  # same columns: the chart's series, which name the table and its columns, stay valid
        mrml.refill_table(earlier[0], table)
        scene.RemoveNode(table)
        table = earlier[0]
    _mark(table, volume_node, ROLE_COMPARISON)
    charts = [c for c in made_for(scene, "vtkMRMLPlotChartNode", volume_node, ROLE_COMPARISON_CHART)
              if c.GetNumberOfPlotSeriesNodes() and c.GetNthPlotSeriesNode(0).GetTableNodeID() == table.GetID()]
    if charts:
        return table, charts[0], result
    chart = mrml.plot_from_table(scene, table, "frame", ["IoM", "ROI precision"], title=name, x_label="frame",
                                 y_label="IoM, ROI precision", line_styles={"IoM": "none", "ROI precision": "none"})
    return table, _mark(chart, volume_node, ROLE_COMPARISON_CHART), result


def jump_to_frame(scene, table_node, row: int, browser) -> int:
    """Select in ``browser`` the frame of ``table_node``'s row ``row`` (a click in the comparison table)."""
    if not 0 <= row < table_node.GetNumberOfRows():
        raise CacError(f"row {row} is not in the table ({table_node.GetNumberOfRows()} rows)")
    frame = int(float(table_node.GetCellText(row, 0)))
    browser.SetSelectedItemNumber(frame)
    return frame
