"""CAC Identifier's Logic without Qt: a cine node to the worker process, the worker's files back as nodes.

:class:`IdentifyJob` writes the cine (and the annotations) as files in a
scratch folder, starts ``cac identify ... --progress-json`` through an
injected :class:`~CACIdentifierLib.worker.ProcessRunner` (``PythonSlicer``
inside Slicer, ``sys.executable`` headless), reports its progress, and loads
``roi.seg.nrrd`` and ``report.json`` into the scene with
:func:`load_identify_outputs`, the same function that loads what the ``cac
identify`` command line wrote.  The panel polls the job from a QTimer;
:func:`identify_in_scene` runs it to the end for the Python console and tests.

Outputs in the scene:

- a Sequence of ROI segmentations synchronized in the cine's browser (each
  frame shows its ROI), replacing the one an earlier run left there;
- the ROIs as one frame-stack segmentation (``output_segmentation`` is
  refilled when given);
- a table, one row per non-contrast frame (frame, paired contrast frame, CAC
  probability, ROI area in mm2 and, with annotations, IoM and HD in mm);
- where ROIs on spots that never move were removed (report ``static_spots``), locked
  point lists of blue crosses at their centres: one on the frame-stack grid and a
  sequence of them in the cine's browser, replacing an earlier run's.

The segmentations lie on the input's own grid (:func:`mrml.frame_stack_geometry`:
origin, spacing and directions as the user left them).  Each output is marked
with the input it was made for (:data:`mrml.REF_MADE_FOR`); a given output
node that holds another cine's results, or was deleted during the run, is not
refilled: a new node is made instead, so one cine's results never replace
another's.

>>> out = identify_in_scene(scene, sequence_node, device="cpu")   # doctest: +SKIP
>>> out["table"].GetNumberOfRows()                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import mrml, nrrd_io, slicercore, worker
from .errors import CacError
from .progress import Cancelled

ROI_COLOR = (1.0, 0.18, 0.69)
ROI_SEGMENT = "CAC ROI"
# The overlay's blue crosses: where an ROI on a spot that never moves was removed (static_structures.py).
STATIC_COLOR = (0.3, 0.75, 0.93)
# CAC_role of the outputs (the ROI sequence is "roi" too): an output is refilled only in its own role.
ROLE_ROI, ROLE_RESULTS, ROLE_STATIC = "roi", "results", "static_spots"


# --------------------------------------------------------------------------- outputs -> nodes


def _remove_previous_sequences(scene, browser, cine_sequence, role=ROLE_ROI) -> None:
    """Remove the ROI sequences (or those of another ``role``) and their proxies that an earlier run on
    ``cine_sequence`` synchronized in ``browser`` (another cine played in the same browser keeps its own)."""
    import vtk

    collection = vtk.vtkCollection()
    browser.GetSynchronizedSequenceNodes(collection, True)
    for i in range(collection.GetNumberOfItems()):
        sequence = collection.GetItemAsObject(i)
        if sequence is None or sequence.GetAttribute(nrrd_io.ATTR_ROLE) != role:
            continue
        if mrml.is_output(sequence) and not mrml.is_made_for(sequence, cine_sequence):
            continue
        proxy = browser.GetProxyNode(sequence)
        browser.RemoveSynchronizedSequenceNode(sequence.GetID())
        mrml.remove_with_helpers(scene, proxy)  # and its display node: re-runs leave nothing behind
        mrml.remove_with_helpers(scene, sequence)


def results_table_columns(report: dict) -> dict[str, list]:
    """The columns of the results table from ``report.json``: issue 12's item-4 measures beside the paper's.

    ROI area in mm2 and in % of the exposed field (IoM divides by the smaller area, so a ROI over
    everything scores 1: its size must be shown beside it); with annotations IoM, HD and ROI precision
    (the share of the ROI inside the annotators' ROI_GT).

    Examples
    --------
    >>> report = {"frames": [{"index": 3, "contrast_frame": 40, "probability": 0.7, "roi_area_mm2": 12.5,
    ...                       "roi_area_pct_field": 0.4, "iom": 1.0, "hd_mm": 3.2, "roi_precision": 0.8}],
    ...           "summary": {}}
    >>> list(results_table_columns(report))
    ['frame', 'contrast frame', 'CAC probability', 'ROI area (mm2)', 'ROI area (% of field)', 'IoM', 'HD (mm)', 'ROI precision']
    """
    rows = report["frames"]
    columns = {
        "frame": [r["index"] for r in rows],
        "contrast frame": [r["contrast_frame"] for r in rows],
        "CAC probability": [r["probability"] for r in rows],
        "ROI area (mm2)": [r["roi_area_mm2"] for r in rows],
        "ROI area (% of field)": [r.get("roi_area_pct_field") for r in rows],
    }
    if "summary" in report:
        columns["IoM"] = [r.get("iom") for r in rows]
        columns["HD (mm)"] = [r.get("hd_mm") for r in rows]
        columns["ROI precision"] = [r.get("roi_precision") for r in rows]
    return columns


def load_identify_outputs(scene, input_node, out_dir, name=None, output_segmentation=None,
                          output_table=None) -> dict:
    """Load what ``cac identify`` wrote in ``out_dir`` as nodes over ``input_node`` (the cine it read).

    Returns ``{"roi_sequence", "roi_segmentation", "table", "report", "summary", "roi", "static_spots",
    "static_spots_sequence"}`` (``roi``: the ``(n_frames, rows, columns)`` bool masks; ``roi_sequence``
    and ``static_spots_sequence`` are None when the input is a frame-stack volume without a browser;
    the ``static_spots`` point list and its sequence are None when no ROI was removed as static).
    """
    out_dir = Path(out_dir)
    report_path, seg_path = out_dir / "report.json", out_dir / "roi.seg.nrrd"
    if not report_path.is_file() or not seg_path.is_file():
        raise CacError(f"{out_dir} lacks report.json or roi.seg.nrrd; run `cac identify` again")
    if not scene.IsNodePresent(input_node):
        raise CacError(f"the input cine {input_node.GetName()!r} was removed from the scene during the "
                       "identification; load it again and press Apply")
    report = json.loads(report_path.read_text())
    cine = mrml.node_to_cine(input_node)
    roi = nrrd_io.read_seg_nrrd(seg_path, expected_shape=cine.frames.shape).union()
    name = name or input_node.GetName()
    output_segmentation = reusable_output(scene, output_segmentation, input_node, ROLE_ROI)
    output_table = reusable_output(scene, output_table, input_node, ROLE_RESULTS)
    ijk_to_ras = mrml.frame_stack_geometry(input_node)
    sequence = mrml.sequence_behind(input_node)
    # A frame-stack volume is the Segment Editor's source for the ROI too; a sequence's 2D frames are not.
    reference = input_node if sequence is None else None

    outputs: dict = {"report": report, "summary": report.get("summary"), "roi": roi}
    if output_segmentation is not None:
        mrml.refill_segmentation(output_segmentation, {ROI_SEGMENT: roi}, cine, {ROI_SEGMENT: ROI_COLOR}, ijk_to_ras)
        if reference is not None:
            output_segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        outputs["roi_segmentation"] = output_segmentation
    else:
        outputs["roi_segmentation"] = mrml.masks_to_frame_stack_segmentation(
            scene, roi, cine, name=f"{name} CAC ROI (frame stack)", colors={ROI_SEGMENT: ROI_COLOR},
            reference_volume=reference, ijk_to_ras=ijk_to_ras)
    mrml.mark_made_for(outputs["roi_segmentation"], input_node)
    outputs["roi_segmentation"].SetAttribute(nrrd_io.ATTR_ROLE, ROLE_ROI)
    mrml.place_under_transform_of(scene, outputs["roi_segmentation"], input_node)

    browser = mrml.browser_of(scene, sequence)
    outputs["roi_sequence"] = None
    if sequence is not None and browser is not None:
        _remove_previous_sequences(scene, browser, sequence)
        outputs["roi_sequence"] = mrml.masks_to_segmentation_sequence(
            scene, roi, sequence, browser, name=f"{name} CAC ROI", color=ROI_COLOR)
        mrml.mark_made_for(outputs["roi_sequence"], sequence)
        mrml.place_under_transform_of(scene, browser.GetProxyNode(outputs["roi_sequence"]), input_node)

    _static_spots_to_scene(scene, outputs, report, cine, input_node, sequence, browser, name, ijk_to_ras)

    table = mrml.table_from_columns(scene, f"{name} CAC results", results_table_columns(report))
    if output_table is not None:
        mrml.refill_table(output_table, table)
        output_table.SetName(f"{name} CAC results")
        scene.RemoveNode(table)
        table = output_table
    mrml.mark_made_for(table, input_node)
    table.SetAttribute(nrrd_io.ATTR_ROLE, ROLE_RESULTS)
    outputs["table"] = table
    return outputs


def _static_spots_to_scene(scene, outputs, report, cine, input_node, sequence, browser, name, ijk_to_ras) -> None:
    """Blue crosses where ROIs on spots that never move were removed (report ``static_spots``), as the overlay
    shows them: a point list on the frame-stack grid and, for a cine in a browser, a sequence of point lists.

    An earlier run's crosses on the same input are removed first: a run that removed nothing leaves none.
    """
    for node in list(scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")):
        if node.GetAttribute(nrrd_io.ATTR_ROLE) == ROLE_STATIC and mrml.is_made_for(node, input_node):
            mrml.remove_with_helpers(scene, node)
    if browser is not None:
        _remove_previous_sequences(scene, browser, sequence, role=ROLE_STATIC)
    spots = {int(f): v for f, v in (report.get("static_spots") or {}).items() if v}
    outputs["static_spots"] = outputs["static_spots_sequence"] = None
    if not spots:
        return
    label = "ROI removed: spot that never moves"
    node = mrml.points_to_frame_stack_markups(scene, spots, cine, f"{name} CAC removed static spots (frame stack)",
                                              STATIC_COLOR, label, ijk_to_ras)
    node.SetAttribute(nrrd_io.ATTR_ROLE, ROLE_STATIC)
    mrml.mark_made_for(node, input_node)
    mrml.place_under_transform_of(scene, node, input_node)
    outputs["static_spots"] = node
    if sequence is not None and browser is not None:
        seq = mrml.points_to_markups_sequence(scene, spots, sequence, browser, f"{name} CAC removed static spots",
                                              STATIC_COLOR, label, role=ROLE_STATIC)
        mrml.mark_made_for(seq, sequence)
        mrml.place_under_transform_of(scene, browser.GetProxyNode(seq), input_node)
        outputs["static_spots_sequence"] = seq


def reusable_output(scene, node, input_node, role):
    """``node`` if it may receive ``input_node``'s results as ``role``, else None (a new node is then made).

    Not reused: a node no longer in the scene (deleted during the run); one
    that holds the results of another input, or of an input since deleted (a
    panel keeps the last run's outputs selected; a run on the next cine must
    not replace them); and one made for another role, such as an annotator's
    segmentation or a majority vote of CAC Annotator (refilling it would erase
    the painting).  A node the user made is reused.
    """
    if node is None or not scene.IsNodePresent(node):
        return None
    if mrml.sequence_behind(node) is not None:
        return None  # a browser's proxy (such as the ROI sequence's) shows one item; a re-run replaces it
    node_role = node.GetAttribute(nrrd_io.ATTR_ROLE)
    if not mrml.is_output(node) and node_role is None:
        return node
    return node if mrml.is_made_for(node, input_node) and node_role in (None, role) else None


def annotation_volume_name(input_node) -> str:
    """How messages about annotations name the volume they are drawn over: the input itself when it is a
    frame-stack volume, else the frame-stack volume of the Sequence (or proxy) chosen as input."""
    name = input_node.GetName()
    return repr(name) if mrml.sequence_behind(input_node) is None else f"the frame-stack volume of {name!r}"


# --------------------------------------------------------------------------- the job


class IdentifyJob:
    """One identification of a cine node in a child process.

    ``start()`` hands the cine over as a ``.seq.nrrd`` file and starts the
    worker; ``poll()`` returns its new events (``{"event": "progress", "done",
    "total", "message"}``...); ``cancel()`` kills its process tree;
    ``load_results()`` puts the outputs in the scene once ``finished``.
    ``runner`` and ``python`` are injected (a :class:`~.worker.ProcessRunner`
    and ``PythonSlicer``/``sys.executable`` by default).
    """

    def __init__(self, scene, input_node, annotation_nodes=(), model_path=None, device="auto", sigma=None,
                 min_island_px=None, threshold=None, onset_frame=None, output_segmentation=None,
                 output_table=None, name=None, runner=None, python=None, work_dir=None, temporal=False,
                 cine_gate=True, roi_patches=None, static_filter=True):
        if input_node is None:
            raise CacError("no input cine selected; load a cine and choose it as input")
        self.scene = scene
        self.input_node = input_node
        self.annotation_nodes = [n for n in (annotation_nodes or []) if n is not None]
        if output_segmentation is not None and any(output_segmentation is n for n in self.annotation_nodes):
            raise CacError("the output segmentation is one of the annotations; choose a new output node "
                           "(annotations are never modified)")
        self.options = dict(model_path=model_path, device=device, sigma=sigma, min_island_px=min_island_px,
                            threshold=threshold, onset_frame=onset_frame, temporal=temporal, cine_gate=cine_gate,
                            roi_patches=roi_patches, static_filter=static_filter)
        self.output_segmentation = output_segmentation
        self.output_table = output_table
        self.name = name
        self.runner = runner or worker.ProcessRunner()
        self.python = python or worker.python_executable()
        self._own_work_dir = work_dir is None
        # The scratch folder (it holds the raw cine) is made by start() and removed by cleanup().
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.events: list[dict] = []
        self.cancelled = False

    @property
    def out_dir(self) -> Path:
        return self.work_dir / "out"

    def start(self) -> None:
        """Write the inputs and start the worker (returns at once).

        If anything fails here (a bad annotation, no Python to start), the
        scratch folder is removed before the error goes on.
        """
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="cac-identify-", dir=slicercore.temporary_directory()))
        try:
            self._start()
        except BaseException:
            self.cleanup()
            raise

    def _start(self) -> None:
        cine = mrml.node_to_cine(self.input_node)
        cine_path = nrrd_io.write_seq_nrrd(cine, self.work_dir / "cine.seq.nrrd", overwrite=True, encoding="raw")
        annotation_paths = []
        grid = mrml.frame_stack_geometry(self.input_node)
        where = annotation_volume_name(self.input_node)
        # Drawn over a cropped copy of the frame-stack volume (in the scene, or the file it was loaded from): the
        # line of CAC Annotator and of `cac dataset add` / `evaluate` / `identify`, before check_same_cine calls
        # the crop another cine.
        mrml.check_nodes_not_cropped(self.annotation_nodes, cine.frames.shape, grid, where)
        mrml.check_same_cine(self.annotation_nodes, self.input_node, cine)
        # A node that records no volume (loaded from a file): the cine its file records, else its grid, as in
        # CAC Annotator.  Each file below records this cine's fingerprint, so the worker cannot tell any more.
        for node in self.annotation_nodes:
            mrml.check_annotation_of(node, cine, cine.frames.shape, grid, where)
        for i, node in enumerate(self.annotation_nodes):
            masks = mrml.segmentation_masks(node, shape=cine.frames.shape, ijk_to_ras=grid)
            if not masks:
                raise CacError(f"annotation {node.GetName()!r} has no segment; draw the calcium or deselect it")
            union = np.zeros(cine.frames.shape, dtype=bool)
            for mask in masks.values():
                if mask.shape != cine.frames.shape:
                    raise CacError(f"annotation {node.GetName()!r} has shape {mask.shape} but the cine is "
                                   f"{cine.frames.shape}; draw it over this cine's frame-stack volume")
                union |= mask
            annotation_paths.append(nrrd_io.write_seg_nrrd(
                self.work_dir / f"annotation{i}.seg.nrrd", {"calcium": union}, cine.spacing_mm, overwrite=True,
                source_fingerprint=cine.fingerprint()))
        command = worker.identify_command(self.python, cine_path, self.out_dir,
                                          annotation_paths=annotation_paths, **self.options)
        self.runner.start(command, env=worker.child_environment())

    def poll(self) -> list[dict]:
        """The worker's events since the last call (never blocks)."""
        events = worker.parse_events(self.runner.read_lines())
        self.events += events
        return events

    @property
    def finished(self) -> bool:
        return self.runner.finished()

    @property
    def succeeded(self) -> bool:
        return self.finished and self.runner.returncode == 0 and not self.cancelled

    def cancel(self) -> None:
        """Kill the worker's process tree (returns at once)."""
        self.cancelled = True
        self.runner.kill()

    def error(self) -> str:
        return worker.error_message(self.runner, self.events)

    def load_results(self) -> dict:
        """The outputs as nodes (after a successful run); raises CacError with the worker's message otherwise."""
        self.poll()
        if self.cancelled:
            raise Cancelled()
        if not self.succeeded:
            raise CacError(self.error())
        outputs = load_identify_outputs(self.scene, self.input_node, self.out_dir, name=self.name,
                                        output_segmentation=self.output_segmentation,
                                        output_table=self.output_table)
        self.cleanup()
        return outputs

    def cleanup(self) -> None:
        """Remove the scratch folder: now if the worker has ended, else as soon as it does.

        After :meth:`cancel` the worker may need a moment to die (SIGTERM, then
        SIGKILL); a daemon thread waits for it, so the panel does not freeze and
        no copy of the cine is left in Slicer's temporary folder.
        """
        if not self._own_work_dir or self.work_dir is None:
            return
        folder = self.work_dir
        if not self.runner.running():
            shutil.rmtree(folder, ignore_errors=True)
            return

        def remove_when_ended():
            try:
                self.runner.wait()
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        threading.Thread(target=remove_when_ended, name="cac-identify-cleanup", daemon=True).start()


def identify_in_scene(scene, input_node, annotation_nodes=(), model_path=None, device="auto", sigma=None,
                      min_island_px=None, threshold=None, onset_frame=None, progress=None,
                      output_segmentation=None, output_table=None, name=None, runner=None, python=None,
                      poll_s: float = 0.1, temporal=False, cine_gate=True, roi_patches=None,
                      static_filter=True) -> dict:
    """Identify CAC ROIs in a cine node through the worker process and put the results in the scene.

    ``input_node`` is a Sequence of 2D frames, its browser's proxy volume or a
    frame-stack volume; annotation nodes are read, never modified.
    ``progress(done, total, message)`` is called from this thread and may raise
    :class:`~.progress.Cancelled` (the worker is then killed).  Returns
    :func:`load_identify_outputs`'s dict.
    """
    import time

    job = IdentifyJob(scene, input_node, annotation_nodes, model_path=model_path, device=device, sigma=sigma,
                      min_island_px=min_island_px, threshold=threshold, onset_frame=onset_frame,
                      output_segmentation=output_segmentation, output_table=output_table, name=name,
                      runner=runner, python=python, temporal=temporal, cine_gate=cine_gate,
                      roi_patches=roi_patches, static_filter=static_filter)
    try:
        job.start()
        while not job.finished:
            for event in job.poll():
                if progress is not None and event.get("event") == "progress":
                    progress(event.get("done", 0), event.get("total", 1), event.get("message", ""))
            time.sleep(poll_s)
        return job.load_results()
    except BaseException:
        job.cancel()
        raise
    finally:
        job.cleanup()
