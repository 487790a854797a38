"""The CAC Annotator Logic: the paper's annotation method on MRML nodes, headless-testable.

The paper's annotators marked calcium on the *non-contrast* frames, guided by
the *contrast* frame of the same cardiac phase.  This Logic gives the panel:

- :class:`PairView`: a second sequence browser on the cine that always shows
  the contrast frame paired with the frame selected in the cine's own browser
  (pairs from :func:`CACIdentifierLib.sync.synchronize`), following it as the
  user browses; :meth:`PairView.show` puts the frame-stack volume (the one
  painted over) in the left view on the browser's frame, and the paired frame
  in the right view, and the two follow each other.
- :func:`create_annotator_segmentations`: one empty "annotator N"
  segmentation per annotator over the frame-stack volume (the geometry of the
  project's ``.seg.nrrd`` files), ready for the Segment Editor.
- :func:`majority_vote_node`: the strict majority of the selected
  annotators' segmentations into the volume's vote node; the inputs are not
  modified, nor is a vote edited by hand.
- :func:`save_annotations`: each segmentation as a ``.seg.nrrd`` that records
  its cine's fingerprint (Slicer's own Save records none); nothing replaced
  unless asked.
- :func:`export_to_dataset`: the annotators' segmentations and the cine into
  a dataset through :func:`CACTrainerLib.dataset_builder.add_acquisition`,
  the code behind ``cac dataset add``.
- :func:`compare_with_annotators`: the AI's ROI against the annotators'
  majority, frame by frame (``cac evaluate``'s rows), as a table and a plot.

A second click never piles up nodes: the annotator segmentations, the vote and
the comparison made for a volume are marked (``CAC_role``, ``CAC_made_for``)
and found again; existing annotators are kept as drawn, the vote and the
comparison are recomputed in place.  Segmentations of another cine are refused
(:func:`annotator_masks`).  :func:`with_messages` collects the CacWarnings of an
action for the panel, which would otherwise show none of them.

MRML work goes through :mod:`CACIdentifierLib.mrml` (node <-> array
conversions); only browser, view and node bookkeeping is done here.
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


def sync_for_sequence(sequence_node, onset: int | None = None):
    """Synchronize the cine held by ``sequence_node``: its :class:`~CACIdentifierLib.sync.result.SyncResult`."""
    from CACIdentifierLib import mrml
    from CACIdentifierLib.sync import synchronize

    cine = mrml.sequence_to_cine(sequence_node)
    return synchronize(cine.frames, cine.frame_time_ms, onset=onset, r_wave_frames=cine.r_wave_frames)


def pairs_for_sequence(sequence_node, onset: int | None = None) -> dict[int, int]:
    """Synchronize the cine held by ``sequence_node`` and return its :func:`pair_table`."""
    return pair_table(sync_for_sequence(sequence_node, onset).pairs)


def pair_view_for_sequence(scene, sequence_node, onset: int | None = None, volume=None, on_frame=None):
    """A :class:`PairView` of the cine held by ``sequence_node``, with its pairs, contrast onset and blank frames
    from synchronization (``onset``: the first contrast frame when given)."""
    result = sync_for_sequence(sequence_node, onset)
    return PairView(scene, sequence_node, pair_table(result.pairs), volume=volume, onset=result.onset_frame,
                    blank_frames=result.blank_frames, guard_frames=result.guard_frames, on_frame=on_frame)


class PairView:
    """A second browser that shows the contrast frame paired with the cine browser's selected frame.

    ``pairs`` is ``{non-contrast: contrast}``.  On a frame without a pair
    (contrast frames, blank frames, the guard band just before a detected
    onset) the paired browser stays where it was, :attr:`current_pair` is None,
    and the right view, once shown, is left empty until a paired frame is
    browsed (it showed the last pair, as if it were this frame's).
    :attr:`note` says in one line what the views show for the browsed frame
    (a contrast frame: "Frame N is a contrast frame ..."), and ``on_frame``,
    when given, is called with the view after each update (the panel shows the
    note).  ``onset`` (first contrast frame), ``blank_frames`` and
    ``guard_frames`` (synchronization's, :func:`pair_view_for_sequence`) name
    why a frame has no pair.  :meth:`start` follows the cine browser through a
    MRML observer; :meth:`update` does the same once (tests, or a panel without
    observers).

    ``volume`` is the cine's frame-stack volume, the one the annotators paint
    over (it must hold the same cine).  The frames of a Sequence all lie in one
    plane, while frame k of the frame-stack volume lies k slices further: a
    brush stroke in a view of the sequence's frame would land on whatever
    frame of the annotation that view's plane cuts, not on the frame shown.  So
    :meth:`show` puts the volume in the left view (``vtkMRMLSliceLogic``), keeps
    that view's plane on the browser's frame, and selects in the browser the
    frame the user scrolls the left view to; the right view shows the paired
    contrast frame.  :meth:`keep_out_of_right_view` keeps segmentations out of
    the right view, where they would lie over another frame (and where the
    Segment Editor would otherwise put the volume it paints over); it holds for
    views created later and for display nodes made later (while following,
    and again each time the pair view is shown).

    >>> # view = PairView(scene, sequence, pairs, volume=frames); view.show(red_logic, yellow_logic); view.start()
    """

    def __init__(self, scene, sequence_node, pairs: dict[int, int], browser=None, volume=None, *,
                 onset: int | None = None, blank_frames=(), guard_frames: int = 0, on_frame=None):
        from CACIdentifierLib import mrml

        self.scene = scene
        self.sequence = sequence_node
        self.pairs = dict(pairs)
        self.onset = None if onset is None else int(onset)
        self.blank_frames = {int(k) for k in blank_frames}
        self.guard_frames = int(guard_frames or 0)
        self.on_frame = on_frame
        self.note = ""
        self.browser = browser or mrml.browser_of(scene, sequence_node)
        if self.browser is None:
            raise CacError("the cine has no sequence browser; load it as a sequence first")
        self.volume = volume
        if volume is not None:
            _check_volume_of_sequence(volume, sequence_node)
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
        self.slice_node = None  # the left view's, once shown with a volume
        self.right_view_id = None
        self.right_composite = None  # the right view's composite node, once shown
        self._right_emptied = False  # the right view was emptied here on a frame without a pair
        self._kept_out = []  # IDs of the segmentations kept out of the right view
        self._tags = []
        self._following = False
        self._applying = False
        self.current_pair = None
        self.update()

    @property
    def proxy(self):
        """The volume node showing the paired contrast frame."""
        return self.paired.GetProxyNode(self.sequence)

    @property
    def frame(self) -> int:
        """The cine browser's selected frame."""
        return int(self.browser.GetSelectedItemNumber())

    def update(self, *_args) -> int | None:
        """Move the paired browser to the pair of the cine browser's frame (and the left view to that frame,
        see :meth:`show`); return that contrast frame."""
        from CACIdentifierLib import slicercore

        frame = self.frame
        self.current_pair = self.pairs.get(frame)
        if self.current_pair is not None and self.paired.GetSelectedItemNumber() != self.current_pair:
            self.paired.SetSelectedItemNumber(self.current_pair)
        slicercore.logic(self.scene, "sequences").UpdateProxyNodesFromSequences(self.paired)
        self._right_view_on_pair()
        if self.slice_node is not None and self.frame_in_view() != frame:
            self._follow(self._jump_to, frame)
        self.note = self.frame_note(frame)
        if self.on_frame is not None:
            self.on_frame(self)
        return self.current_pair

    def _right_view_on_pair(self) -> None:
        """Empty the right view on a frame without a pair (it would show the last pair as this frame's); show
        the pair again on a paired frame.  A volume the user put in the right view meanwhile is left there."""
        composite = self.right_composite
        if composite is None or composite.GetScene() is None:
            return
        proxy = self.proxy
        shown = composite.GetBackgroundVolumeID()
        if self.current_pair is None:
            if proxy is not None and shown == proxy.GetID():
                composite.SetBackgroundVolumeID(None)
                self._right_emptied = True
        elif self._right_emptied:
            if not shown and proxy is not None:
                composite.SetBackgroundVolumeID(proxy.GetID())
            self._right_emptied = False

    def frame_note(self, frame: int | None = None) -> str:
        """One line on what the pair view shows for ``frame`` (the browsed one by default), for the panel.

        >>> # view.frame_note(40) -> "Frame 40 is a contrast frame (contrast from frame 16 on): annotations are
        >>> #   made on the non-contrast frames, so it has no pair, and the right view is left empty; browse to
        >>> #   one of the paired frames 0-13."
        """
        from CACTrainerLib.dataset_builder import frame_runs

        frame = self.frame if frame is None else int(frame)
        pair = self.pairs.get(frame)
        if pair is not None:
            return f"Frame {frame} (non-contrast): the right view shows its paired contrast frame {pair}."
        where = ("the right view is left empty" if self.right_composite is not None else
                 "the paired browser stays where it was")
        paired = f"; browse to one of the paired {frame_runs(sorted(self.pairs))}" if self.pairs else ""
        if self.onset is not None and frame >= self.onset:
            return (f"Frame {frame} is a contrast frame (contrast from frame {self.onset} on): annotations are made on "
                    f"the non-contrast frames, so it has no pair, and {where}{paired}.")
        if frame in self.blank_frames:
            return f"Frame {frame} is blank: it has no pair, and {where}{paired}."
        if self.onset is not None and self.onset - self.guard_frames <= frame:
            return (f"Frame {frame} lies just before the contrast onset at frame {self.onset}, which may be late: "
                    f"like cac identify, the pair view leaves it unpaired, and {where}{paired}.")
        return f"Frame {frame} has no paired contrast frame, and {where}{paired}."

    # ------------------------------------------------------------------ the left view on the volume

    def _volume_to_world(self) -> np.ndarray:
        """The frame-stack volume's IJK-to-world matrix (its grid, under its parent transform if linear)."""
        from CACIdentifierLib import mrml

        matrix = np.asarray(mrml.frame_stack_geometry(self.volume), float)
        transform = self.volume.GetParentTransformNode()
        if transform is not None:
            from vtkmodules.vtkCommonMath import vtkMatrix4x4

            to_world = vtkMatrix4x4()
            if transform.GetMatrixTransformToWorld(to_world):
                matrix = np.array([[to_world.GetElement(i, j) for j in range(4)] for i in range(4)]) @ matrix
        return matrix

    def frame_in_view(self) -> int | None:
        """The frame of the volume that the left view's plane cuts (at the view's centre), None outside it."""
        if not self._volume_shown():
            return None
        slice_to_ras = self.slice_node.GetSliceToRAS()
        centre = [slice_to_ras.GetElement(i, 3) for i in range(3)] + [1.0]
        k = int(np.floor(np.linalg.solve(self._volume_to_world(), centre)[2] + 0.5))
        n = self.volume.GetImageData().GetDimensions()[2]
        return k if 0 <= k < n else None

    def _volume_shown(self) -> bool:
        """Whether the left view follows a volume that is still there (the user may delete it meanwhile)."""
        return (self.slice_node is not None and self.volume is not None and self.volume.GetScene() is not None
                and self.volume.GetImageData() is not None)

    def _jump_to(self, frame: int) -> None:
        """Put the left view's plane through the centre of the volume's ``frame``."""
        if not self._volume_shown():
            return
        nx, ny, _ = self.volume.GetImageData().GetDimensions()
        ras = self._volume_to_world() @ np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, float(frame), 1.0])
        self.slice_node.JumpSliceByOffsetting(float(ras[0]), float(ras[1]), float(ras[2]))

    def _follow(self, function, *args) -> None:
        """Run ``function`` without reacting to the view changes it makes (no browser <-> view ping-pong)."""
        if self._following:
            return
        self._following = True
        try:
            function(*args)
        finally:
            self._following = False

    def _view_moved(self, *_args) -> None:
        """The user scrolled the left view: select its frame in the cine browser (which moves the pair)."""
        if self._following:
            return
        frame = self.frame_in_view()
        if frame is not None and frame != self.frame:
            self._follow(self.browser.SetSelectedItemNumber, frame)
            self.update()

    def show(self, left_logic, right_logic) -> None:
        """Show the pair in two slice views, given their ``vtkMRMLSliceLogic``: on the left the frame-stack
        volume on the browser's frame (the cine browser's frame when no volume was given: then brush strokes
        there do not land on the frame shown), on the right the paired contrast frame; both fitted."""
        following = bool(self._tags)
        self.stop()  # observers again below, on the views shown now
        left = self.volume if self.volume is not None else self.browser.GetProxyNode(self.sequence)
        self.slice_node = None
        for logic, node in ((left_logic, left), (right_logic, self.proxy)):
            logic.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID() if node is not None else None)
            self._follow(logic.FitSliceToAll)
        self.right_view_id = right_logic.GetSliceNode().GetID()
        self.right_composite = right_logic.GetSliceCompositeNode()
        self._right_emptied = False
        if self.volume is not None:
            self.slice_node = left_logic.GetSliceNode()
        self._apply_keep_out()  # the views as they are now (the right one may be another than before)
        self.update()
        if following:
            self.start()

    def keep_out_of_right_view(self, nodes) -> None:
        """Show ``nodes`` (segmentations over the volume) in every view but the right one.

        There they would lie over the contrast frame at the plane of another frame; and the Segment
        Editor puts the volume it paints over into each view that shows the segmentation, which would
        replace the paired contrast frame.  A display node lists the views it is shown in, so the list is
        made again whenever it would go stale: while following (:meth:`start`), when a view is created
        (a layout with more views) and when a display node of these segmentations is made (the
        segmentation shown again); and each time the pair view is shown.  Before, views created later
        never showed the segmentations, and a display node made later showed them in the right view too.
        """
        for node in nodes:
            if node is not None and node.GetID() not in self._kept_out:
                self._kept_out.append(node.GetID())
                if self._tags:  # following: its display nodes made later are kept out too
                    self._observe_kept(node)
        self._apply_keep_out(create=True)

    def _apply_keep_out(self, *_args, create: bool = False) -> None:
        """List every view but the right one in each display node of the kept-out segmentations (those still in
        the scene); ``create``: give a segmentation without a display node its default ones first."""
        if self.right_view_id is None or not self._kept_out or self._applying:
            return
        views = [v.GetID() for v in self.scene.GetNodesByClass("vtkMRMLAbstractViewNode")
                 if v.GetID() != self.right_view_id]
        if self.slice_node is not None and self.slice_node.GetID() not in views:
            views.append(self.slice_node.GetID())
        if not views:
            return
        self._applying = True  # making display nodes and setting their views calls back here
        try:
            for node_id in list(self._kept_out):
                node = self.scene.GetNodeByID(node_id)
                if node is None or not node.IsA("vtkMRMLDisplayableNode"):
                    self._kept_out.remove(node_id)
                    continue
                if create and node.GetDisplayNode() is None:
                    node.CreateDefaultDisplayNodes()
                for i in range(node.GetNumberOfDisplayNodes()):
                    display = node.GetNthDisplayNode(i)
                    if display is not None and list(display.GetViewNodeIDs()) != views:
                        display.SetViewNodeIDs(views)
        finally:
            self._applying = False

    def _observe_kept(self, node) -> None:
        """Keep ``node`` out of the right view when it gets a display node (it is shown again)."""
        self._tags.append((node, node.AddObserver(node.DisplayModifiedEvent, self._apply_keep_out)))

    def start(self) -> None:
        """Follow the cine browser (an observer on its Modified event), and the left view when shown on a volume;
        keep the segmentations kept out of the right view out of it in views and display nodes made later."""
        if not self._tags:
            self._tags.append((self.browser, self.browser.AddObserver("ModifiedEvent", self.update)))
            if self.slice_node is not None:
                self._tags.append((self.slice_node, self.slice_node.AddObserver("ModifiedEvent", self._view_moved)))
            self._tags.append((self.scene, self.scene.AddObserver(self.scene.NodeAddedEvent, self._apply_keep_out)))
            for node_id in self._kept_out:
                node = self.scene.GetNodeByID(node_id)
                if node is not None:
                    self._observe_kept(node)
            self._apply_keep_out()

    def stop(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        self._tags = []


def _check_volume_of_sequence(volume_node, sequence_node) -> None:
    """Refuse a frame-stack volume that does not hold the sequence's cine (pixel for pixel)."""
    from CACIdentifierLib import mrml

    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.GetImageData() is None:
        raise CacError(f"{volume_node.GetName()!r} is not a frame-stack volume; choose the cine's frame-stack volume "
                       "(cac convert CINE OUT.nrrd)")
    if mrml.frame_stack_volume_to_cine(volume_node).fingerprint() != mrml.sequence_to_cine(sequence_node).fingerprint():
        raise CacError(f"the frame-stack volume {volume_node.GetName()!r} holds another cine than the sequence "
                       f"{sequence_node.GetName()!r}; choose the volume and the sequence of the same cine")


# The command line's remedies, as the panel words them (its field is 'Onset frame').
_PANEL_WORDING = (
    (r"add the run again with --onset N --overwrite \(N: ([^)]*)\)",
     r"export it again with 'Onset frame' set to \1 (and replace it)"),
    (r"pass --onset N \(N: ([^)]*)\)", r"set 'Onset frame' in the panel to \1"),
    (r"pass --onset N to set the onset", "set 'Onset frame' in the panel"),
    (r"pass --onset to set it", "set 'Onset frame' in the panel to change it"),
    (r"--onset (\d+)", r"'Onset frame' \1"),
)


def panel_wording(message: str) -> str:
    """``message`` (a CacError's or CacWarning's line) with its ``--onset`` remedies named as the panel's field.

    >>> panel_wording("... the first half (frames 0-7) is non-contrast; pass --onset to set it")
    "... the first half (frames 0-7) is non-contrast; set 'Onset frame' in the panel to change it"
    """
    import re

    for pattern, replacement in _PANEL_WORDING:
        message = re.sub(pattern, replacement, message)
    return message


def with_messages(function, *args, **kwargs):
    """``(function(*args, **kwargs), warnings)``: the CacWarnings it gave (a guessed onset, pairs by
    similarity for want of a periodicity, what ``cac dataset add`` warns about) as lines for the panel,
    which would otherwise never show them; a plain CacError's line is worded for the panel too."""
    import warnings

    from CACIdentifierLib.errors import CacWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacWarning)
            result = function(*args, **kwargs)
    except CacError as exc:
        worded = panel_wording(str(exc))
        if type(exc) is CacError and worded != str(exc):  # subclasses (AlreadyInDataset...) go on as they are
            raise CacError(worded) from None
        raise
    messages = []
    for w in caught:
        if issubclass(w.category, CacWarning):
            text = panel_wording(str(w.message))
            if text not in messages:
                messages.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, messages


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


def _check_same_cine(nodes, volume_node, cine, grid) -> None:
    """:func:`CACIdentifierLib.mrml.check_nodes_not_cropped`, then :func:`CACIdentifierLib.mrml.check_same_cine`,
    as CAC Identifier's Apply runs them."""
    from CACIdentifierLib import mrml

    mrml.check_nodes_not_cropped(nodes, cine.frames.shape, grid, repr(volume_node.GetName()))
    mrml.check_same_cine(nodes, volume_node, cine)


def annotator_masks(nodes, shape, ijk_to_ras=None, cine=None, volume_name: str = "the frame-stack volume") -> list:
    """Each segmentation node's calcium (union of its segments) as ``shape`` (frames, rows, cols) bool
    (on the grid ``ijk_to_ras`` of the frame-stack volume where a node has no reference geometry).

    A node loaded from a ``.seg.nrrd`` that records another cine than ``cine``
    (``CAC_source_fingerprint``) is refused, and so is a node that records no cine (no file fingerprint,
    no volume it was drawn over: :func:`CACIdentifierLib.mrml.check_same_cine` checks those) on another
    grid (another size, pixel spacing or axes): its pixels would be read as this cine's calcium.  Those checks
    are :func:`CACIdentifierLib.mrml.check_annotation_of`'s, CAC Identifier's, with its lines.  A node drawn
    over a cropped copy of the volume is refused before, with ``cac dataset add``'s line, by the callers here
    (:func:`_check_same_cine`, which runs :func:`CACIdentifierLib.mrml.check_nodes_not_cropped` as CAC
    Identifier does).
    """
    from CACIdentifierLib import mrml

    out = []
    for node in nodes:
        mrml.check_annotation_of(node, cine, shape, ijk_to_ras, volume_name)  # CAC Identifier's checks and lines
        segments = mrml.segmentation_masks(node, shape, ijk_to_ras)
        if not segments:
            raise CacError(f"segmentation {node.GetName()!r} has no segments; paint calcium first")
        masks = [np.asarray(m, bool) for m in segments.values()]
        for m in masks:
            if m.shape != tuple(shape):
                raise CacError(f"segmentation {node.GetName()!r} covers {_size(m.shape)}, but {volume_name} "
                               f"has {_size(shape)}: it was drawn over another cine; choose the segmentations drawn "
                               f"over {volume_name}")
        out.append(np.any(np.stack(masks), axis=0))
    return out


def _size(shape) -> str:
    return f"{shape[0]} frames of {shape[1]} x {shape[2]} px"


ATTR_VOTE_DIGEST = "CAC_vote_digest"  # what the module wrote into its vote node (to tell a hand-edited vote)


def _mask_digest(mask: np.ndarray) -> str:
    import hashlib

    mask = np.asarray(mask, bool)
    return hashlib.sha256(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def _vote_content(node, shape, grid) -> np.ndarray | None:
    """The union of the vote ``node``'s segments on the cine's grid, None when it cannot be read there."""
    from CACIdentifierLib import mrml

    try:
        segments = mrml.segmentation_masks(node, shape, grid)
    except CacError:
        return None
    masks = [np.asarray(m, bool) for m in segments.values()]
    if any(m.shape != tuple(shape) for m in masks):
        return None
    return np.any(np.stack(masks), axis=0) if masks else np.zeros(shape, bool)


def majority_vote_node(scene, nodes, volume_node, name: str = "majority vote"):
    """The strict majority of ``nodes`` (more than half mark a pixel) as the volume's vote node.

    The vote made earlier for this volume under ``name`` is recomputed in place
    (one vote per volume, however often the button is pressed); a new node is
    made when there is none, or when that node is among ``nodes``.  The inputs
    are read, never modified.  A vote edited by hand since it was computed (a
    consensus reading, say) is never recomputed over: it is kept as it is,
    renamed "``name`` (edited)", and the new vote goes into a new node (with a
    CacWarning that says so).
    """
    import warnings

    from CACIdentifierLib import mrml
    from CACIdentifierLib.errors import CacWarning
    from CACIdentifierLib.metrics import majority_vote

    if not nodes:
        raise CacError("select the annotators' segmentations to combine")
    cine = mrml.frame_stack_volume_to_cine(volume_node)
    grid = mrml.frame_stack_geometry(volume_node)
    _check_same_cine(nodes, volume_node, cine, grid)
    masks = annotator_masks(nodes, cine.frames.shape, grid, cine, repr(volume_node.GetName()))
    vote = {"calcium": majority_vote(masks)}
    inputs = {node.GetID() for node in nodes}
    out = None
    for node in made_for(scene, "vtkMRMLSegmentationNode", volume_node, ROLE_VOTE, name):
        if node.GetID() in inputs:
            continue
        content = _vote_content(node, cine.frames.shape, grid)
        recorded = node.GetAttribute(ATTR_VOTE_DIGEST)
        if content is not None and (_mask_digest(content) == recorded
                                    or (not recorded and np.array_equal(content, vote["calcium"]))):
            out = mrml.refill_segmentation(node, vote, cine, {"calcium": CALCIUM_COLOR}, grid)
            break
        kept = f"{name} (edited)"
        if scene.GetFirstNodeByName(kept) is not None:
            kept = scene.GenerateUniqueName(kept)
        node.SetName(kept)
        why = ("was changed after it was computed" if recorded else
               "differs from this vote and records no digest (a scene of an earlier version), so a hand edit "
               "cannot be ruled out")
        warnings.warn(f"the vote {name!r} {why}; it is kept as {kept!r}, and the new vote is in a new {name!r}",
                      CacWarning, stacklevel=2)
    if out is None:
        out = mrml.masks_to_frame_stack_segmentation(scene, vote, cine, name, colors={"calcium": CALCIUM_COLOR},
                                                     reference_volume=volume_node)
    out.SetAttribute(ATTR_VOTE_DIGEST, _mask_digest(vote["calcium"]))
    return _mark(out, volume_node, ROLE_VOTE)


class AlreadySaved(CacError):
    """Annotation files that exist already; :attr:`paths` lists them (the panel asks, then saves with overwrite)."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        names = ", ".join(p.name for p in self.paths)
        super().__init__(f"{names} already exist{'s' if len(self.paths) == 1 else ''} in {self.paths[0].parent}; "
                         "choose another folder, or replace them")


def annotation_file_name(node) -> str:
    """``"annotator 1"`` -> ``"annotator_1.seg.nrrd"`` (letters, digits, ``._-``; others become ``_``)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", node.GetName()).strip("._") or "annotation"
    return f"{stem}.seg.nrrd"


def save_annotations(nodes, volume_node, folder, *, overwrite: bool = False) -> list[Path]:
    """Write each segmentation of ``nodes`` to ``folder/<its name>.seg.nrrd`` with its cine's fingerprint.

    Slicer's own Save writes a ``.seg.nrrd`` that records no source cine, so ``cac evaluate``, ``cac
    identify --annotations`` and ``cac dataset add`` can check it only by its grid; these files record
    ``CAC_source_fingerprint`` (a hash of the pixels, no identifier) and are refused with another cine.
    The segments are written as they are, on the full frame-stack grid.  Each file is written under a
    temporary name and renamed; existing files are never replaced unless ``overwrite`` (else
    :class:`AlreadySaved`, before anything is written).  Returns the paths.
    """
    from CACIdentifierLib import mrml, nrrd_io

    if not nodes:
        raise CacError("select the annotators' segmentations to save")
    if str(folder) in ("", "."):
        raise CacError("choose the folder to save the annotations in")
    folder = Path(folder)
    cine = mrml.frame_stack_volume_to_cine(volume_node)
    grid = mrml.frame_stack_geometry(volume_node)
    _check_same_cine(nodes, volume_node, cine, grid)
    annotator_masks(nodes, cine.frames.shape, grid, cine, repr(volume_node.GetName()))  # the checks
    paths = [folder / annotation_file_name(node) for node in nodes]
    seen = {}
    for node, path in zip(nodes, paths):
        if path.name in seen:
            raise CacError(f"segmentations {seen[path.name]!r} and {node.GetName()!r} would both be saved as "
                           f"{path.name}; rename one of them")
        seen[path.name] = node.GetName()
    if folder.exists() and not folder.is_dir():
        raise CacError(f"{folder} is a file, not a folder; choose a folder for the annotations")
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        raise AlreadySaved(existing)
    folder.mkdir(parents=True, exist_ok=True)
    for node, path in zip(nodes, paths):
        segments = mrml.segmentation_masks(node, cine.frames.shape, grid)
        colors = {name: CALCIUM_COLOR for name in segments if name == "calcium"}
        nrrd_io.write_seg_nrrd(path, segments, cine.spacing_mm, colors, overwrite=overwrite,
                               source_fingerprint=cine.fingerprint())
    return paths


def export_to_dataset(dataset, cine_path, nodes, volume_node, *, patient: str | None = None,
                      onset: int | None = None, key_file=None, overwrite: bool = False):
    """Add the cine file ``cine_path`` and the annotators' segmentation ``nodes`` to ``dataset``.

    The nodes are written as ``.seg.nrrd`` files in a temporary folder and
    handed to :func:`CACTrainerLib.dataset_builder.add_acquisition` (the code
    of ``cac dataset add``: same checks, pseudonyms and layout).  Returns its
    :class:`~CACTrainerLib.dataset_builder.Added`.

    The cine file must hold the volume's cine (pixel for pixel): the annotations
    were drawn over the volume.  A pixel spacing the user set on the volume (the
    file has none) and the volume's frame time are given with the file, as
    ``--spacing`` and ``--frame-time`` are on the command line.  Messages and warnings name the segmentation
    nodes, not the temporary files.  The warnings are ``cac dataset add``'s, among them the one on calcium
    marked at or after the onset that training uses (contrast frames: training takes only the frames
    before it), which names the annotators and frames; :func:`with_messages` words their command-line
    remedies for the panel.
    """
    import warnings

    from CACIdentifierLib import mrml, nrrd_io
    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.errors import CacWarning
    from CACTrainerLib.dataset_builder import add_acquisition

    cine = mrml.frame_stack_volume_to_cine(volume_node)
    _check_same_cine(nodes, volume_node, cine, mrml.frame_stack_geometry(volume_node))
    masks = annotator_masks(nodes, cine.frames.shape, mrml.frame_stack_geometry(volume_node), cine,
                            repr(volume_node.GetName()))
    if not masks:
        raise CacError("select the annotators' segmentations to export")
    # A spacing the user set on the volume (the file has none: a run without PixelSpacing, a frame folder) and
    # the volume's frame time go with the file, as --spacing and --frame-time do: the annotations lie on them.
    spacing = cine.spacing_mm if cine.spacing_source == "user" else None
    frame_time = cine.frame_time_ms
    if load_cine(cine_path, spacing_mm=spacing, frame_time_ms=frame_time).fingerprint() != cine.fingerprint():
        raise CacError(f"the cine file {Path(cine_path).name} holds another cine than {volume_node.GetName()!r}, "
                       f"the volume the annotations were drawn over; choose the file {volume_node.GetName()!r} was "
                       "loaded from")
    with tempfile.TemporaryDirectory(prefix="cac-annotations-") as tmp:
        paths = []
        for i, m in enumerate(masks):
            path = Path(tmp) / f"annotator{i + 1}.seg.nrrd"
            nrrd_io.write_seg_nrrd(path, {"calcium": m}, cine.spacing_mm, source_fingerprint=cine.fingerprint())
            paths.append(path)

        def named(text: str) -> str:
            for path, node in zip(paths, nodes):
                text = text.replace(str(path), repr(node.GetName()))
            return text

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CacWarning)
                added = add_acquisition(dataset, cine_path, paths, patient=patient, onset=onset, key_file=key_file,
                                        overwrite=overwrite, spacing_mm=spacing, frame_time_ms=frame_time)
        except CacError as exc:
            if type(exc) is CacError and tmp in str(exc):
                raise CacError(named(str(exc))) from None
            raise
    for w in caught:  # add_acquisition's own warnings, calcium marked at or after the onset among them
        if issubclass(w.category, CacWarning):
            warnings.warn(named(str(w.message)), CacWarning, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return added


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
    _check_same_cine([roi_node, *annotator_nodes], volume_node, cine, grid)
    roi = annotator_masks([roi_node], shape, grid, cine, repr(volume_node.GetName()))[0]
    masks = annotator_masks(annotator_nodes, shape, grid, cine, repr(volume_node.GetName()))
    result = evaluate_masks(roi, majority_vote(masks), cine.spacing_mm)
    result["spacing_mm"] = cine.spacing_mm
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


def comparison_summary(result) -> str:
    """One line on :func:`compare_with_annotators`'s ``result`` for the panel.

    The counts of frames where both, only the AI, only the annotators, or neither mark calcium, as
    ``cac evaluate`` prints them: a bare "agree in N of M frames" counts every frame neither side marks
    (the contrast frames, which nobody annotates, among them) as agreement.
    """
    presence = result["summary"]["presence"]
    line = (f"Calcium marked by both the AI and the annotators' majority in {presence['both']} frames, by the AI "
            f"only in {presence['ai_only']}, by the annotators only in {presence['truth_only']}, by neither in "
            f"{presence['neither']} (of all {presence['frames']} frames, contrast frames included); click a row to "
            "show its frame.")
    if result.get("spacing_mm", ()) is None:
        line += (" HD and ROI area in mm are empty: the pixel spacing of this cine is unknown (set it on the "
                 "frame-stack volume in the Volumes module).")
    return line


def jump_to_frame(scene, table_node, row: int, browser) -> int:
    """Select in ``browser`` the frame of ``table_node``'s row ``row`` (a click in the comparison table)."""
    if not 0 <= row < table_node.GetNumberOfRows():
        raise CacError(f"row {row} is not in the table ({table_node.GetNumberOfRows()} rows)")
    frame = int(float(table_node.GetCellText(row, 0)))
    browser.SetSelectedItemNumber(frame)
    return frame
