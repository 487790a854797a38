"""Real-data datasets: your angiography runs and your annotators' segmentations, in the layout `cac train` reads.

Layout of a dataset folder (the same ``manifest.json`` keys as a phantom
dataset, so ``cac train`` and ``--cv patient`` read it unchanged)::

    manifest.json                        format "cac-dataset/1", the list of acquisitions
    pseudonym.key                        the secret salt of the pseudonyms (see Privacy)
    P-1a2b3c4d5e6f/A01/cine.nrrd         the cine as a frame-stack volume (no DICOM header)
    P-1a2b3c4d5e6f/A01/annotator1.seg.nrrd ...  each annotator's calcium, on the cine's grid
    P-1a2b3c4d5e6f/A01/majority.seg.nrrd the strict majority vote (the paper's ground truth)
    P-1a2b3c4d5e6f/A01/acquisition.json  onset, annotator agreement (pairwise Dice per non-contrast frame)

What :func:`add_acquisition` checks: the cine loads; each segmentation lies
on the cine's pixel grid in physical space (files saved cropped to their
minimum extent are accepted: :mod:`CACIdentifierLib.seg_align`; one drawn
over a cropped copy of the frame-stack volume is refused, with the line of
CAC Annotator, CAC Identifier, ``cac evaluate`` and ``cac identify``:
:func:`CACIdentifierLib.seg_align.check_not_cropped`);
each segmentation that records its source cine (``CAC_source_fingerprint``:
CAC Annotator, ``cac identify``, the phantom) records this one (equal shapes
are not enough; ``ignore_source`` overrides); the annotators agree on the
frames; the series is not in the dataset yet.  The segmentations written into
the dataset record the cine's fingerprint.

Privacy
-------
The patient folder and id are ``P-`` + the first 12 hex digits of
HMAC-SHA256(salt, PatientID) (or of ``--patient`` when given): the same
patient gets the same pseudonym within a dataset, and nobody without the salt
can test a guessed PatientID against it.  The salt is drawn at random when the
dataset is created and kept in ``pseudonym.key``: move that file out of the
folder before sharing the dataset (pass ``--key FILE`` to add more).  The
series identity is stored the same way (a keyed hash of SeriesInstanceUID, or
of the pixel data for non-DICOM cines), so duplicates are found without
keeping the UID.  Nothing else from the DICOM header is kept: the cine is
rewritten as a NRRD frame stack carrying only pixel data, spacing, frame time
and R-wave frames; no name, birth date, UID, date, institution or file path
reaches the dataset, its reports or the messages.

Writing is atomic: the acquisition folder is built aside and moved in place,
then the manifest is replaced in one rename; an existing acquisition is only
replaced with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import secrets
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from CACIdentifierLib.errors import CacError, CacWarning
from CACIdentifierLib.fileutil import atomic_output

FORMAT = "cac-dataset/1"
MANIFEST = "manifest.json"
KEY_FILE = "pseudonym.key"
CALCIUM_COLOR = (0.95, 0.85, 0.1)


# --------------------------------------------------------------------------- pseudonyms


def read_or_create_key(dataset: Path, key_file=None, create: bool = True) -> bytes:
    """The dataset's salt: from ``key_file``, else ``dataset/pseudonym.key`` (created when missing)."""
    path = Path(key_file) if key_file else dataset / KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        if len(key) < 32:
            raise CacError(f"{path} is not a pseudonym key (too short); give the key file of this dataset")
        return key.encode()
    if key_file or not create:
        raise CacError(f"pseudonym key {path} not found; give the key file this dataset was built with (--key)")
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key.encode()


def pseudonym(key: bytes, value: str, prefix: str = "P-") -> str:
    """``prefix`` + 12 hex digits of HMAC-SHA256(key, value): stable per key, not reversible without it.

    >>> pseudonym(b"k" * 64, "556342B")
    'P-af1cbea94b65'
    """
    return prefix + hmac.new(key, value.strip().encode(), hashlib.sha256).hexdigest()[:12]


# --------------------------------------------------------------------------- agreement


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice coefficient ``2|A ∩ B| / (|A| + |B|)``; None when both are empty."""
    na, nb = int(a.sum()), int(b.sum())
    if na + nb == 0:
        return None
    return 2.0 * float(np.sum(a & b)) / (na + nb)


def pairwise_dice(masks, before: int | None = None) -> dict:
    """Pairwise Dice of the annotators per frame where any of them marks calcium, on the frames before
    ``before`` (the contrast onset: the non-contrast frames, the ones annotated and used for training; all
    frames when None).  Marks at or after it do not count: nobody annotates contrast frames, so marks there are
    strays or a late onset, which :func:`add_acquisition` warns about apart.

    Returns ``{"pairs": [[i, j], ...], "frames": [k, ...], "dice": [[d_pair0, d_pair1, ...] per frame],
    "median": median over all defined values (None if none), "before_frame": before}`` (annotators 0-based;
    None where both of a pair are empty).

    >>> a = np.zeros((4, 2, 2), bool); b = a.copy()
    >>> a[0, 0] = b[0, 0] = True; a[3, 1] = True   # agree on frame 0; frame 3 (contrast) only one marks
    >>> pairwise_dice([a, b])["median"], pairwise_dice([a, b], before=2)["median"]
    (0.5, 1.0)
    """
    masks = [np.asarray(m, bool) for m in masks]
    pairs = list(itertools.combinations(range(len(masks)), 2))
    n = masks[0].shape[0] if before is None else min(int(before), masks[0].shape[0])
    frames = [k for k in range(n) if any(m[k].any() for m in masks)]
    table = [[dice(masks[i][k], masks[j][k]) for i, j in pairs] for k in frames]
    values = [v for row in table for v in row if v is not None]
    return {"pairs": [list(p) for p in pairs], "frames": frames, "dice": table,
            "median": float(np.median(values)) if values else None,
            "before_frame": None if before is None else int(before)}


# --------------------------------------------------------------------------- manifest


def load(dataset) -> dict:
    """The manifest of a real-data dataset (``{"format", "acquisitions": [...]}``; relative paths)."""
    path = Path(dataset) / MANIFEST
    if not path.is_file():
        raise CacError(f"{path} not found; create the dataset with `cac dataset add {dataset} CINE --annotations ...`")
    try:
        manifest = json.loads(path.read_text())
        manifest["acquisitions"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacError(f"{path} is not a valid dataset manifest ({exc}); restore it from a backup") from None
    if manifest.get("format") != FORMAT:
        raise CacError(f"{dataset} is a {manifest.get('format', 'unknown')} dataset, not a {FORMAT} one; "
                       "add real acquisitions to a new folder")
    return manifest


def _write_manifest(dataset: Path, manifest: dict) -> None:
    with atomic_output(dataset / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))


@contextlib.contextmanager
def _locked(dataset: Path):
    """One writer at a time: a lock file made with O_EXCL, removed at the end."""
    lock = dataset / ".lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CacError(f"{dataset} is being changed by another `cac dataset` (or one was killed: "
                       f"delete {lock} if none is running)") from None
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


# --------------------------------------------------------------------------- adding


@dataclass
class Added:
    """What :func:`add_acquisition` did (no identifying data: safe to print).

    ``annotated_frames`` and ``calcium_frames`` count the frames training uses, those before ``onset_frame``
    (all frames when there is no onset); ``contrast_annotated_frames`` the frames at or after it that an
    annotator marked, which training does not use.  ``dice_median``, the annotators' agreement (median of
    their pairwise Dice per frame, :func:`pairwise_dice`), is of those same frames before the onset: the
    non-contrast frames, where annotations are made.
    """

    id: str
    patient: str
    folder: str
    n_frames: int
    annotated_frames: int
    calcium_frames: int
    onset_frame: int | None
    onset_source: str
    dice_median: float | None
    replaced: bool
    detected_onset_frame: int | None = None
    onset_guard_frames: int = 0
    contrast_annotated_frames: int = 0


class NeedsPatient(CacError):
    """The cine has no DICOM PatientID and no patient was given.

    A front end words the remedy its own way (``--patient`` on the command
    line, the Patient ID field in CAC Annotator).
    """


class AlreadyInDataset(CacError):
    """The series (or, without a SeriesInstanceUID, the same pixels) is already in the dataset.

    ``acquisition`` is the id it has there, so that a front end can ask
    whether to replace it (``overwrite=True``).
    """

    def __init__(self, message: str, acquisition: str) -> None:
        super().__init__(message)
        self.acquisition = acquisition


def _annotator_masks(paths, segment: str | None) -> tuple[list, list]:
    from CACIdentifierLib import nrrd_io

    files = []
    for p in paths:
        f = nrrd_io.read_seg_nrrd(p)
        if segment is not None and segment not in f.segments:
            raise CacError(f"{p} has no segment {segment!r} (it has: {', '.join(sorted(f.segments))}); "
                           "check --segment")
        files.append(f)
    return files


def _refuse_repeated(annotations) -> None:
    """Refuse one file given as two annotators (the same path, however spelt: links and ``..`` seen through)."""
    seen = {}
    for a in annotations:
        real = Path(a).resolve()
        if real in seen:
            raise CacError(f"annotation file {a} is given twice (also as {seen[real]}); give each annotator's own "
                           ".seg.nrrd once")
        seen[real] = a


def _identical_files(paths, files=None) -> list[tuple[str, str]]:
    """Pairs of distinct files with byte-identical contents (a file copied for another annotator).

    With ``files`` (each path's :class:`~CACIdentifierLib.nrrd_io.SegFile`), files that mark nothing are left
    out: two annotators who found no calcium write the same empty file (same grid, same cine), which is no
    drawing counted twice.
    """
    marks = {p: True for p in paths} if files is None else \
        {p: any(np.any(m) for m in f.segments.values()) for p, f in zip(paths, files)}
    first_of = {}
    pairs = []
    for p in paths:
        if not marks[p]:
            continue
        digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if digest in first_of:
            pairs.append((first_of[digest], p))
        else:
            first_of[digest] = p
    return pairs


def _identity(cine, key: bytes) -> tuple[str, str]:
    uid = cine.identifiers.get("SeriesInstanceUID", "")
    if uid:
        return pseudonym(key, uid, "S-"), "series"
    digest = hashlib.sha256(np.ascontiguousarray(cine.frames).tobytes()).hexdigest()
    return pseudonym(key, digest, "S-"), "pixels"


def add_acquisition(dataset, cine_path, annotations, *, patient: str | None = None, onset: int | None = None,
                    segment: str | None = None, spacing_mm=None, frame_time_ms=None, key_file=None,
                    overwrite: bool = False, ignore_source: bool = False) -> Added:
    """Add one acquisition (a cine and its annotators' ``.seg.nrrd`` files) to ``dataset``.

    Parameters
    ----------
    dataset : path
        Dataset folder; created (with a new pseudonym key) when missing.
    cine_path : path
        DICOM XA file or folder, ``.nrrd``/``.seq.nrrd``, or a folder of frame
        images (then ``spacing_mm`` and ``frame_time_ms``).
    annotations : list of paths
        One ``.seg.nrrd`` per annotator (at least one; the paper had three),
        drawn over the cine's frame-stack volume; the union of each file's
        segments is the annotator's calcium unless ``segment`` names one.
    patient : str, optional
        Patient identifier when the cine has no DICOM PatientID (or to
        override it); pseudonymised like the DICOM one.
    onset : int, optional
        First contrast frame (0-based); detected by synchronization when None.
        Training takes the frames before ``onset_frame`` as non-contrast: the
        given onset, or the detected one less the guard band that ``cac
        identify`` leaves out (:data:`CACIdentifierLib.sync.ONSET_GUARD_FRAMES`;
        the detected onset is kept as ``detected_onset_frame``).
    overwrite : bool
        Replace an acquisition of the same series already in the dataset.
    ignore_source : bool
        Accept annotations that record another source cine (a warning
        instead of an error).

    Raises
    ------
    NeedsPatient
        The cine has no PatientID and ``patient`` is not given.
    AlreadyInDataset
        The series is in the dataset already and ``overwrite`` is False.
    CacError
        Any other bad input (files, frames, grids, sources).
    """
    import warnings

    from CACIdentifierLib.cine_io import load_cine
    from CACIdentifierLib.metrics import majority_vote
    from CACIdentifierLib.seg_align import (
        check_not_cropped,
        check_same_source,
        common_grid,
        frame_stack_matrix,
        grid_of,
        segfile_on_cine,
        warn_unrecorded,
    )

    dataset = Path(dataset)
    annotations = [str(a) for a in annotations]
    if not annotations:
        raise CacError("no annotations given; pass each annotator's .seg.nrrd with --annotations")
    _refuse_repeated(annotations)
    if not Path(cine_path).exists():
        raise CacError(f"cine {cine_path} not found; give the DICOM file or folder, .nrrd or frame folder")
    cine = load_cine(cine_path, spacing_mm=spacing_mm, frame_time_ms=frame_time_ms)
    n, rows, cols = cine.frames.shape
    if onset is not None and not 0 < int(onset) < n:
        raise CacError(f"--onset {onset} is outside the cine's frames 1..{n - 1}; give the first contrast frame")
    files = _annotator_masks(annotations, segment)
    identical = _identical_files(annotations, files)
    # Annotators among themselves first, so that the message names the two that disagree.
    try:
        common_grid([grid_of(f) for f in files], annotations)
    except CacError as exc:
        raise CacError(str(exc).replace("compare segmentations of the same cine",
                                        "the annotators must segment the same cine")) from None
    # Drawn over a cropped copy of the frame-stack volume: refused, with the line every other caller gives (one check).
    for a, f in zip(annotations, files):
        matrix, shape, has_reference = grid_of(f)
        if has_reference:
            check_not_cropped(a, matrix, shape, frame_stack_matrix(cine.spacing_mm), (n, rows, cols))
    masks = []
    for f in files:
        on_cine = segfile_on_cine(f, n, rows, cols, cine.spacing_mm)
        chosen = on_cine[segment] if segment else np.any(np.stack(list(on_cine.values())), axis=0)
        masks.append(chosen)
    # After the grid checks (another geometry is plainly another cine): equal grids, then equal sources.
    fingerprint = cine.fingerprint()
    sources = [("the cine", fingerprint), *((a, f.source_fingerprint) for a, f in zip(annotations, files))]
    check_same_source(sources, ignore=ignore_source, advice="give the annotations made on this cine",
                      warn_missing=False, first_is_cine=True)
    majority = majority_vote(masks)

    if dataset.exists() and not dataset.is_dir():
        raise CacError(f"{dataset} is a file, not a dataset folder; give a folder (a new one is created)")
    # What this call creates is removed again if it fails: a failed first add leaves no half-built dataset.
    dataset_created = not dataset.exists()
    created = [dataset] if dataset_created else []
    dataset.mkdir(parents=True, exist_ok=True)
    new = not (dataset / MANIFEST).exists()
    key_path = Path(key_file) if key_file else dataset / KEY_FILE
    if new and not key_file and not key_path.exists():
        created.append(key_path)
    try:
        key = read_or_create_key(dataset, key_file, create=new)
        with _locked(dataset):
            manifest = {"format": FORMAT, "acquisitions": []} if new else load(dataset)
            patient_value = patient or cine.identifiers.get("PatientID", "")
            if not patient_value:
                raise NeedsPatient(f"{Path(cine_path).name} has no PatientID; give --patient (any stable id of the "
                               "patient: it is pseudonymised) so that folds keep a patient's runs together")
            pid = pseudonym(key, patient_value)
            series, series_from = _identity(cine, key)
            existing = [e for e in manifest["acquisitions"] if e.get("series") == series]
            if existing and not overwrite:
                raise AlreadyInDataset(f"this {'series' if series_from == 'series' else 'cine'} is already in the "
                                       f"dataset as {existing[0]['id']}; pass --overwrite to replace it",
                                       existing[0]["id"])
            if existing:
                acq_id = existing[0]["id"]
                rel = Path(existing[0]["cine"]).parent
            else:
                used = {e["id"] for e in manifest["acquisitions"]}
                k = 1 + sum(1 for e in manifest["acquisitions"] if e.get("patient") == pid)
                while f"{pid}-A{k:02d}" in used:
                    k += 1
                acq_id, rel = f"{pid}-A{k:02d}", Path(pid) / f"A{k:02d}"
            if not (dataset / rel.parent).exists():
                created.append(dataset / rel.parent)
            detected_onset = None
            if onset is not None:
                onset_frame, onset_source = int(onset), "given"
            else:
                from CACIdentifierLib.sync import synchronize

                # Default guard band: the pairs leave out the frames just before a detected onset, as in identify.
                sync = synchronize(cine.frames, cine.frame_time_ms, r_wave_frames=cine.r_wave_frames, ecg=cine.ecg)
                onset_frame = None if sync.onset_frame is None else int(sync.onset_frame)
                # Synchronization falls back to the middle frame when no contrast arrival is found: a guess.
                onset_source = "detected" if sync.onset_detected else "guessed"
                if sync.onset_detected:
                    # A detected onset is more often late than early: training takes as non-contrast the frames
                    # `cac identify` analyses (and CAC Annotator pairs), not the guard band's wash-in candidates.
                    detected_onset = onset_frame
                    if sync.guard_frames and sync.pairs:
                        onset_frame = max(int(a) for a, _ in sync.pairs) + 1
            guard = 0 if detected_onset is None else detected_onset - onset_frame
            # Training takes the frames before onset_frame: the counts are of those; marks at or after it
            # (contrast frames, or the guard band) are counted apart, and warned about below.
            used = n if onset_frame is None else onset_frame
            marked = [int(k) for k in range(n) if any(m[k].any() for m in masks)]
            calcium_frames = [int(k) for k in range(used) if majority[k].any()]
            annotated = [k for k in marked if k < used]
            contrast_marked = [k for k in marked if k >= used]
            # The annotators' agreement on the frames they annotate (the non-contrast ones), as the counts above.
            agreement = pairwise_dice(masks, before=onset_frame)
            record = {
                "id": acq_id, "patient": pid, "series": series, "series_from": series_from,
                "cine": str(rel / "cine.nrrd"),
                "annotators": [str(rel / f"annotator{i + 1}.seg.nrrd") for i in range(len(masks))],
                "majority": str(rel / "majority.seg.nrrd"),
                "truth": str(rel / "acquisition.json"),
                "n_frames": int(n), "rows": int(rows), "columns": int(cols),
                "frame_time_ms": cine.frame_time_ms,
                "spacing_mm": list(cine.spacing_mm) if cine.spacing_mm is not None else None,
                "onset_frame": onset_frame, "onset_source": onset_source,
                "detected_onset_frame": detected_onset, "onset_guard_frames": guard,
                "n_annotators": len(masks), "annotated_frames": len(annotated), "calcium_frames": len(calcium_frames),
                "contrast_annotated_frames": len(contrast_marked),
                "dice_median": agreement["median"],
            }
            info = {"id": acq_id, "patient": pid, "onset_frame": onset_frame, "onset_source": onset_source,
                    "detected_onset_frame": detected_onset, "onset_guard_frames": guard,
                    "calcium_frames": calcium_frames, "annotated_frames": annotated,
                    "contrast_annotated_frames": contrast_marked, "agreement": agreement,
                    "agreement_frames": ("all frames (no contrast onset)" if onset_frame is None else
                                         "the non-contrast frames before the onset "
                                         f"({frame_runs(list(range(onset_frame)))}), "
                                         "where annotations are made; marks at or after it are left out"),
                    "rule": "strict majority (a pixel is calcium when more than half of the annotators mark it)"}
            _write_acquisition(dataset, rel, cine, masks, majority, info, replace=bool(existing),
                               fingerprint=fingerprint)
            manifest["acquisitions"] = [e for e in manifest["acquisitions"] if e["id"] != acq_id] + [record]
            manifest["acquisitions"].sort(key=lambda e: e["id"])
            _write_manifest(dataset, manifest)
    except BaseException:
        _remove_created(created, dataset_created)
        raise
    warn_unrecorded(sources)  # after the work: an error above stays the only line
    unmarked = None if onset is not None or onset_frame is None else unmarked_before_onset(marked, onset_frame)
    if unmarked is not None:
        found = f"detected at frame {detected_onset}" if detected_onset is not None else f"guessed at frame {onset_frame}"
        warnings.warn(f"the annotators mark calcium up to frame {unmarked[0] - 1}, but no annotator marks frames "
                      f"{unmarked[0]}-{unmarked[1]}, which training takes as calcium-free non-contrast frames (contrast "
                      f"onset {found}); if contrast has arrived in them, add the run again with --onset N --overwrite "
                      "(N: the first frame with contrast)", CacWarning, stacklevel=2)
    if contrast_marked:
        late = [(a, [k for k in range(used, n) if m[k].any()]) for a, m in zip(annotations, masks)]
        which = "; ".join(f"{a} on {frame_runs(frames)}" for a, frames in late if frames)
        warnings.warn(f"calcium marked at or after frame {onset_frame} is not used for training (training takes only "
                      f"the non-contrast frames before it): {which}; mark calcium on the non-contrast frames, or, if "
                      "those frames hold no contrast, add the run again with --onset N --overwrite (N: the first frame "
                      "with contrast)", CacWarning, stacklevel=2)
    for first, second in identical:
        warnings.warn(f"annotations {first} and {second} are identical files: one drawing counted as two "
                      "annotators inflates their agreement and the majority; check that each is its annotator's own",
                      CacWarning, stacklevel=2)
    return Added(acq_id, pid, str(rel), int(n), len(annotated), len(calcium_frames), onset_frame, onset_source,
                 agreement["median"], bool(existing), detected_onset, guard, len(contrast_marked))


def frame_runs(frames) -> str:
    """Frame numbers as runs, for messages.

    >>> frame_runs([3, 4, 5, 9]), frame_runs([7])
    ('frames 3-5, 9', 'frame 7')
    """
    runs, start = [], None
    for i, k in enumerate(frames):
        if start is None:
            start = k
        if i + 1 == len(frames) or frames[i + 1] != k + 1:
            runs.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ("frame " if len(frames) == 1 else "frames ") + ", ".join(runs)


def unmarked_before_onset(annotated, onset_frame: int) -> tuple[int, int] | None:
    """``(first, last)`` of the frames just before ``onset_frame`` that no annotator marks, when that run is longer
    than every run of unmarked frames between the marked frames before it (the annotators' own spacing); else None.

    Annotators mark calcium on non-contrast frames, and a deposit recurs in every beat: marks that stop well
    before the onset training uses suggest that the onset is late, and that the frames between hold contrast.

    >>> unmarked_before_onset([0, 1, 2, 3, 4, 5], 9), unmarked_before_onset([0, 3, 6, 9], 12)
    ((6, 8), None)
    """
    marked = sorted(int(k) for k in annotated if k < onset_frame)
    if not marked:
        return None
    spacing = max((b - a - 1 for a, b in zip(marked, marked[1:])), default=0)
    if onset_frame - 1 - marked[-1] > spacing:
        return marked[-1] + 1, onset_frame - 1
    return None


def _remove_created(paths, dataset_created: bool) -> None:
    """Undo a failed add: remove what it created, newest first.

    ``paths[0]`` is the dataset folder when ``dataset_created`` (removed whole:
    nothing in it predates this call); other folders only if empty.
    """
    for i, path in reversed(list(enumerate(paths))):
        if path.is_dir():
            if i == 0 and dataset_created:
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.rmdir()
        else:
            path.unlink(missing_ok=True)


def _write_acquisition(dataset: Path, rel: Path, cine, masks, majority, info: dict, replace: bool,
                       fingerprint: str | None = None) -> None:
    """Build the acquisition folder aside, then move it in place (replacing the old one only if asked)."""
    from copy import copy

    from CACIdentifierLib import nrrd_io

    target = dataset / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        clean = copy(cine)
        clean.source = ""  # a file path can name the patient
        clean.identifiers = {}
        nrrd_io.write_frame_stack_nrrd(clean, tmp / "cine.nrrd")
        colors = {"calcium": CALCIUM_COLOR}
        for i, m in enumerate(masks):
            nrrd_io.write_seg_nrrd(tmp / f"annotator{i + 1}.seg.nrrd", {"calcium": m}, cine.spacing_mm, colors=colors,
                                source_fingerprint=fingerprint)
        nrrd_io.write_seg_nrrd(tmp / "majority.seg.nrrd", {"calcium": majority}, cine.spacing_mm, colors=colors,
                            source_fingerprint=fingerprint)
        (tmp / "acquisition.json").write_text(json.dumps(info, indent=1))
        old = None
        if target.exists():
            if not replace:
                raise CacError(f"{target} exists but is not in the manifest; run `cac dataset check` and remove it")
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- check and info


def check(dataset) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a dataset, one line each: problems break training or the layout,
    warnings do not (fewer than three annotators, no onset, no calcium in any majority vote, the pseudonym key
    inside the folder).

    Every file of every acquisition is checked the way training will need it, without loading the voxels:
    each NRRD's header and data length (:func:`~CACIdentifierLib.nrrd_check.check_nrrd`: not garbage, empty or
    truncated), the cine's frames and size against the manifest, each segmentation's grid against the cine,
    and ``acquisition.json`` as a JSON object."""
    dataset = Path(dataset)
    manifest = load(dataset)
    problems, warnings = [], []
    listed = set()
    series = {}
    for e in manifest["acquisitions"]:
        acq = e.get("id", "?")
        problems += _file_problems(dataset, e, acq)
        if e.get("cine"):
            listed.add((dataset / e["cine"]).parent.resolve())
        if e.get("series") in series:
            problems.append(f"{acq}: same series as {series[e['series']]}")
        series[e.get("series")] = acq
        if e.get("n_annotators", 0) < 3:
            warnings.append(f"{acq}: {e.get('n_annotators', 0)} annotator(s); the paper's majority vote used three")
        if e.get("onset_frame") is None:
            warnings.append(f"{acq}: no contrast onset (not detected); add it again with --onset N")
        elif e.get("onset_source") == "guessed":
            warnings.append(f"{acq}: contrast onset not detected, frame {e['onset_frame']} guessed; "
                            "add it again with --onset N")
        elif e.get("onset_source") == "detected" and "onset_guard_frames" not in e:
            from CACIdentifierLib.sync import ONSET_GUARD_FRAMES

            warnings.append(f"{acq}: contrast onset detected at frame {e['onset_frame']} and stored without the "
                            f"{ONSET_GUARD_FRAMES}-frame guard band (an older `cac dataset add`): training takes the "
                            "frames just before it, which `cac identify` leaves out, as non-contrast; add it again "
                            "with --overwrite")
    warnings += _no_calcium_warning([frame_counts(dataset, e) for e in manifest["acquisitions"]])
    for folder in sorted(dataset.glob("*/*")):
        if folder.is_dir() and not folder.name.startswith(".") and folder.resolve() not in listed:
            problems.append(f"{folder.relative_to(dataset)}: folder not in the manifest (an interrupted add?)")
    for leftover in sorted(dataset.glob("*/.*.tmp-*")) + sorted(dataset.glob("*/.*.old-*")):
        problems.append(f"{leftover.relative_to(dataset)}: leftover of an interrupted add; delete it")
    if (dataset / ".lock").exists():
        problems.append(".lock: a `cac dataset` is running, or one was killed (then delete .lock)")
    if (dataset / KEY_FILE).exists():
        warnings.append(f"{KEY_FILE}: the pseudonym key is inside the dataset; move it out before sharing "
                        "(then pass --key FILE to add more)")
    return problems, warnings


def frame_counts(dataset, record: dict) -> dict:
    """The marked frames of a manifest record that training uses: ``{"annotated_frames", "calcium_frames",
    "contrast_annotated_frames"}`` (None where unknown).

    Training takes the frames before ``onset_frame``; ``annotated_frames`` (any annotator marks calcium) and
    ``calcium_frames`` (the majority vote does) count those, ``contrast_annotated_frames`` the marked frames at
    or after it.  Records of this ``cac dataset add`` hold the three counts.  An older one counted every frame,
    contrast frames too: its counts are taken again from its ``acquisition.json`` (the frame lists and the onset),
    or, when that cannot be read, as they are (contrast marks unknown).
    """
    if "contrast_annotated_frames" in record:
        return {key: record.get(key) for key in ("annotated_frames", "calcium_frames", "contrast_annotated_frames")}
    old = {"annotated_frames": record.get("annotated_frames"), "calcium_frames": record.get("calcium_frames"),
           "contrast_annotated_frames": None}
    try:
        truth = json.loads((Path(dataset) / record["truth"]).read_bytes().decode("utf-8"))
        onset = truth.get("onset_frame", record.get("onset_frame"))
        annotated, calcium = truth["annotated_frames"], truth["calcium_frames"]
        used = None if onset is None else int(onset)
        return {"annotated_frames": sum(1 for k in annotated if used is None or int(k) < used),
                "calcium_frames": sum(1 for k in calcium if used is None or int(k) < used),
                "contrast_annotated_frames": sum(1 for k in annotated if used is not None and int(k) >= used)}
    except (KeyError, TypeError, ValueError, AttributeError, OSError, RecursionError):
        return old


def agreement_median(dataset, record: dict) -> float | None:
    """The annotators' agreement of a manifest record on the frames training uses (before ``onset_frame``).

    Records of this ``cac dataset add`` hold it as ``dice_median`` (their ``acquisition.json`` agreement has
    ``before_frame``).  An older one took every marked frame, contrast frames too: its median is taken again from
    the per-frame table of its ``acquisition.json``, or, when that cannot be read, is the recorded one.

    >>> agreement_median(".", {"dice_median": 0.5})  # no truth file to read: as recorded
    0.5
    """
    recorded = record.get("dice_median")
    try:
        truth = json.loads((Path(dataset) / record["truth"]).read_bytes().decode("utf-8"))
        agreement = truth["agreement"]
        if "before_frame" in agreement:
            return recorded
        onset = truth.get("onset_frame", record.get("onset_frame"))
        values = [v for k, row in zip(agreement["frames"], agreement["dice"]) if onset is None or int(k) < int(onset)
                  for v in row if v is not None]
        return float(np.median(values)) if values else None
    except (KeyError, TypeError, ValueError, AttributeError, OSError, RecursionError):
        return recorded


def _no_calcium_warning(counts) -> list[str]:
    """One line when no acquisition has calcium in its majority vote on the frames training uses (those before
    the onset): training would find no positive patch.

    ``counts`` holds each acquisition's :func:`frame_counts`; one without them is not judged.
    """
    if not counts or any(c.get("calcium_frames") != 0 for c in counts):
        return []
    n = len(counts)
    where = "the acquisition" if n == 1 else f"all {n} acquisitions"
    if all(c.get("annotated_frames") == 0 for c in counts):
        if any(c.get("contrast_annotated_frames") for c in counts):
            return [f"no calcium marked before the contrast onset in {where}: the marks at or after it are not used "
                    "for training, so training would have no positive patch; mark calcium on the non-contrast "
                    f"frames (or, if the frames marked hold no contrast, add {'it' if n == 1 else 'them'} again with "
                    "--onset N --overwrite, N: the first frame with contrast)"]
        return [f"no calcium marked in {where}: every annotation is empty, so training would have no positive "
                "patch; add runs with calcium marked (or add these again with --overwrite and the annotators' "
                "calcium segmentations)"]
    return [f"no calcium in the majority vote of {where} (no pixel of a frame before the contrast onset is marked by "
            "more than half of the annotators): training would have no positive patch; check that the annotators "
            "marked the same calcium, or add runs with calcium marked"]


def _nrrd_problem(path: Path, exc: Exception) -> str:
    """Why an NRRD file cannot be read, without its absolute path and the readers' advice (check gives its own)."""
    text = str(exc)
    text = text[len(str(path)):] if text.startswith(str(path)) else f": {text}"
    return text.split(";")[0].rstrip()


def _stack_grid(path: Path, segmentation: bool) -> tuple[tuple[int, int, int], bool]:
    """``((frames, rows, columns), exact)`` of a frame-stack ``.nrrd`` or a ``.seg.nrrd``, from its header.

    :func:`~CACIdentifierLib.nrrd_check.check_nrrd` reads the header and counts the data bytes (no voxel is
    kept), so a garbage, empty or truncated file raises :class:`CacError`.  A segmentation's grid is its
    reference image geometry (what :func:`~CACIdentifierLib.nrrd_io.read_seg_nrrd` pads a cropped labelmap
    to); without one ``exact`` is False: its labelmap need only fit in the cine's grid.
    """
    from CACIdentifierLib.nrrd_check import check_nrrd
    from CACIdentifierLib.nrrd_io import reference_shape

    fields = check_nrrd(path)
    sizes = [int(v) for v in fields["sizes"].split()]
    # A frame stack is (columns, rows, frames); a segmentation in layers has a leading layer axis.
    if len(sizes) != 3 and not (segmentation and len(sizes) == 4):
        kind = "segmentation" if segmentation else "frame stack"
        raise CacError(f"{path} has {len(sizes)} axes, not those of a {kind}")
    shape = (sizes[-1], sizes[-2], sizes[-3])
    if segmentation:
        grid = reference_shape(fields.get("Segmentation_ConversionParameters", ""))
        return (shape, False) if grid is None else (grid, True)
    return shape, True


def _file_problems(dataset: Path, e: dict, acq: str) -> list[str]:
    """The problems of one acquisition's files: missing, unreadable, truncated, or not on the cine's grid."""
    redo = "add the acquisition again with `cac dataset add ... --overwrite`"
    problems = []
    for key in ("cine", "majority", "truth"):
        if not e.get(key) or not (dataset / e[key]).is_file():
            problems.append(f"{acq}: {key} file {e.get(key)} is missing")
    for a in e.get("annotators", []):
        if not (dataset / a).is_file():
            problems.append(f"{acq}: annotator file {a} is missing")
    listed = (e.get("n_frames"), e.get("rows"), e.get("columns"))
    # The cine's grid as the manifest records it; the file's own when it reads (an unreadable cine is one problem,
    # and the segmentations are still judged against the manifest).
    cine = listed if all(isinstance(v, int) and not isinstance(v, bool) for v in listed) else None
    if e.get("cine") and (dataset / e["cine"]).is_file():
        path = dataset / e["cine"]
        try:
            grid, _ = _stack_grid(path, segmentation=False)
        except (CacError, OSError) as exc:
            problems.append(f"{acq}: cine file {e['cine']}{_nrrd_problem(path, exc)}; {redo}")
        else:
            if cine is not None and grid != cine:
                problems.append(f"{acq}: cine file {e['cine']} holds {grid[0]} frames of {grid[1]}x{grid[2]} px but "
                                f"the manifest lists {cine[0]} frames of {cine[1]}x{cine[2]} px; {redo}")
            cine = grid
    segmentations = [("majority", e.get("majority"))] + [("annotator", a) for a in e.get("annotators", [])]
    for key, rel in segmentations:
        if not rel or not (dataset / rel).is_file():
            continue
        path = dataset / rel
        try:
            grid, exact = _stack_grid(path, segmentation=True)
        except (CacError, OSError) as exc:
            problems.append(f"{acq}: {key} file {rel}{_nrrd_problem(path, exc)}; {redo}")
            continue
        if cine is not None and (grid != cine if exact else any(g > c for g, c in zip(grid, cine))):
            problems.append(f"{acq}: {key} file {rel} covers {grid[0]} frames of {grid[1]}x{grid[2]} px but the "
                            f"cine has {cine[0]} frames of {cine[1]}x{cine[2]} px; {redo}")
    if e.get("truth") and (dataset / e["truth"]).is_file():
        try:
            truth = json.loads((dataset / e["truth"]).read_bytes().decode("utf-8"))
        except (ValueError, OSError, RecursionError):
            truth = None
        if not isinstance(truth, dict):
            problems.append(f"{acq}: truth file {e['truth']} is not a JSON object; {redo}")
    return problems


def info(dataset) -> dict:
    """Counts of a dataset: patients, acquisitions, frames, annotated frames, frames with calcium, agreement.

    Annotated frames and frames with calcium are those training uses, before each onset (:func:`frame_counts`);
    ``contrast_annotated_frames`` counts the marked frames at or after it; the agreement is of the same frames
    (:func:`agreement_median`)."""
    manifest = load(dataset)
    acqs = manifest["acquisitions"]
    dice_values = [d for d in (agreement_median(dataset, e) for e in acqs) if d is not None]
    counts = [frame_counts(dataset, e) for e in acqs]
    return {
        "patients": len({e["patient"] for e in acqs}),
        "acquisitions": len(acqs),
        "frames": int(sum(e.get("n_frames", 0) for e in acqs)),
        "annotated_frames": int(sum(c.get("annotated_frames") or 0 for c in counts)),
        "calcium_frames": int(sum(c.get("calcium_frames") or 0 for c in counts)),
        "contrast_annotated_frames": int(sum(c.get("contrast_annotated_frames") or 0 for c in counts)),
        "annotators": sorted({int(e.get("n_annotators", 0)) for e in acqs}),
        "dice_median_of_acquisitions": float(np.median(dice_values)) if dice_values else None,
        "per_patient": {p: sum(1 for e in acqs if e["patient"] == p) for p in sorted({e["patient"] for e in acqs})},
    }
