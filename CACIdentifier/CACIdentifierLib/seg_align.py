"""Segmentations of one cine aligned in physical space.

Slicer saves a segmentation on the grid it was drawn on, cropped or not: a
file cropped to its minimum extent holds fewer rows and columns and a
shifted origin, yet its pixels are the same pixels of the same frames.
Comparing such files by array shape would refuse them or, worse, compare
shifted pixels.  Here each file's arrays are placed by their ``ijk_to_ras``
matrix (read by :func:`CACIdentifierLib.nrrd_io.read_seg_nrrd`) on one
common grid.  A segmentation drawn over a *cropped copy* of the frame-stack
volume (its reference geometry: fewer rows or columns of the same pixels)
could be placed only by the crop's origin, which nothing checks: it is
refused everywhere with one line (:func:`check_not_cropped`).

Rules
-----
- The pixel lattice must be the same: equal spacing and axes (to 0.1 %),
  origins apart by whole pixels.  Anything else is another acquisition or a
  resampled copy, and is refused with one line.
- Frames: files whose grid is a stored reference geometry (the volume they
  were drawn on) must cover the same frames; a file without one (its own
  labelmap extent) may cover fewer, and its missing frames are empty.
- Rows and columns: the common grid is the union of all the files' grids;
  a file is empty where it has no pixels.  But a reference geometry with
  the cine's frames and axes and fewer rows or columns is a cropped copy of
  its volume, refused (:func:`check_not_cropped`; without the cine, against
  the largest of the files', :func:`check_none_cropped`).
- Source: equal shapes do not make the same cine.  Files written by this
  project record the content fingerprint of their cine
  (``CAC_source_fingerprint``); :func:`check_same_source` refuses files of
  different cines and warns about files that record none (Slicer's own,
  older ones), which are then compared on their grid only.

>>> a = np.diag([-0.3, -0.3, 1.0, 1.0])
>>> b = a.copy(); b[:3, 3] = (-0.6, -0.9, 0.0)   # 2 columns, 3 rows further
>>> grid = common_grid([(a, (2, 4, 4), True), (b, (2, 1, 2), True)])
>>> grid.shape, grid.offsets
((2, 4, 4), [(0, 0, 0), (0, 3, 2)])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .cine import short_fingerprint
from .errors import CacError, CacWarning


@dataclass
class CommonGrid:
    """Where each input lies on the common grid.

    ``shape`` (frames, rows, cols) of the common grid; ``ijk_to_ras`` its
    matrix (array index (i, j, k) -> RAS); ``offsets[n]`` the (frame, row,
    col) index of input ``n``'s first pixel on it; ``spacing_mm`` (row, col).
    """

    shape: tuple[int, int, int]
    ijk_to_ras: np.ndarray
    offsets: list[tuple[int, int, int]]
    spacing_mm: tuple[float, float]

    def place(self, n: int, array: np.ndarray) -> np.ndarray:
        """Input ``n``'s bool ``array`` on the common grid (zeros elsewhere)."""
        out = np.zeros(self.shape, dtype=bool)
        k, j, i = self.offsets[n]
        nk, nj, ni = array.shape
        out[k : k + nk, j : j + nj, i : i + ni] = array
        return out


def _name(names, n: int) -> str:
    return str(names[n]) if names and n < len(names) and names[n] else f"segmentation {n + 1}"


def common_grid(grids, names=None, *, tol: float = 1e-3) -> CommonGrid:
    """The union grid of several ``(ijk_to_ras, shape, has_reference)`` inputs on one pixel lattice.

    ``shape`` is (frames, rows, cols).  Raises :class:`CacError` (one line,
    naming the file) when spacing or axes differ, when an origin is off the
    lattice, or when files with a reference geometry cover different frames.
    """
    if not grids:
        raise CacError("no segmentation to align")
    first = np.asarray(grids[0][0], float)
    axes0 = first[:3, :3]
    spacing0 = np.linalg.norm(axes0, axis=0)
    if np.any(spacing0 <= 0):
        raise CacError(f"{_name(names, 0)} has a zero pixel spacing; save it again from Slicer")
    starts = []
    for n, (matrix, shape, _ref) in enumerate(grids):
        matrix = np.asarray(matrix, float)
        axes = matrix[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        if not np.allclose(axes, axes0, rtol=tol, atol=tol * float(spacing0.min())):
            raise CacError(
                f"{_name(names, n)} has pixel spacing {_fmt_spacing(spacing)} but {_name(names, 0)} has "
                f"{_fmt_spacing(spacing0)} (or other axes); compare segmentations of the same cine"
            )
        ijk = np.linalg.solve(first, np.append(matrix[:3, 3], 1.0))[:3]
        if not np.allclose(ijk, np.round(ijk), atol=0.01):
            raise CacError(
                f"{_name(names, n)} is shifted by a fraction of a pixel from {_name(names, 0)} "
                f"(offset {tuple(round(float(v), 3) for v in ijk)} px); compare segmentations of the same cine"
            )
        i, j, k = (int(v) for v in np.round(ijk))
        starts.append((k, j, i, tuple(int(s) for s in shape)))
    # Frames: the reference geometries must agree; files without one must lie inside.
    with_ref = [n for n, g in enumerate(grids) if g[2]] or list(range(len(grids)))

    def frames(n):
        return starts[n][0], starts[n][0] + starts[n][3][0]

    a = with_ref[0]
    for b in with_ref[1:]:
        if frames(b) != frames(a):
            raise CacError(
                f"{_name(names, b)} covers {starts[b][3][0]} frames but {_name(names, a)} covers "
                f"{starts[a][3][0]}; compare segmentations of the same cine"
            )
    if len(with_ref) < len(grids):
        k_lo, k_hi = frames(a)
    else:
        k_lo, k_hi = min(s[0] for s in starts), max(s[0] + s[3][0] for s in starts)
    for n, (k, _j, _i, shape) in enumerate(starts):
        if k < k_lo or k + shape[0] > k_hi:
            raise CacError(
                f"{_name(names, n)} has frames {k}-{k + shape[0] - 1} outside frames {k_lo}-{k_hi - 1} of the "
                "others; compare segmentations of the same cine"
            )
    j_lo = min(s[1] for s in starts)
    i_lo = min(s[2] for s in starts)
    j_hi = max(s[1] + s[3][1] for s in starts)
    i_hi = max(s[2] + s[3][2] for s in starts)
    matrix = first.copy()
    matrix[:3, 3] = (first @ np.array([i_lo, j_lo, k_lo, 1.0]))[:3]
    offsets = [(k - k_lo, j - j_lo, i - i_lo) for k, j, i, _ in starts]
    spacing = (float(spacing0[1]), float(spacing0[0]))
    return CommonGrid((k_hi - k_lo, j_hi - j_lo, i_hi - i_lo), matrix, offsets, spacing)


def _fmt_spacing(xyz) -> str:
    return f"{float(xyz[1]):.4g} x {float(xyz[0]):.4g} mm"


def grid_of(seg) -> tuple[np.ndarray, tuple[int, int, int], bool]:
    """``(ijk_to_ras, shape, has_reference)`` of a :class:`~CACIdentifierLib.nrrd_io.SegFile` for :func:`common_grid`."""
    matrix = seg.ijk_to_ras
    if matrix is None:  # a SegFile built in memory: frame-stack convention, origin 0
        matrix = frame_stack_matrix(seg.spacing_mm)
    return matrix, tuple(seg.shape), bool(seg.has_reference)


def frame_stack_matrix(spacing_mm) -> np.ndarray:
    """The ``ijk_to_ras`` matrix of a cine's frame-stack volume (origin 0, LPS axes, slice = frame).

    ``spacing_mm`` is (row, col) or None (unknown: 1 mm, as the files store it).
    """
    row, col = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
    return np.diag([-col, -row, 1.0, 1.0])


def align_segfiles(files) -> tuple[list[dict[str, np.ndarray]], CommonGrid]:
    """Every file's segments on their common grid (:func:`common_grid`), in the order given."""
    grid = common_grid([grid_of(f) for f in files], [getattr(f, "path", "") for f in files])
    out = [{name: grid.place(n, mask) for name, mask in f.segments.items()} for n, f in enumerate(files)]
    return out, grid


def segfile_on_cine(seg, n_frames: int, rows: int, cols: int, spacing_mm) -> dict[str, np.ndarray]:
    """The segments of ``seg`` on a cine's frame-stack grid (the cine defines frames and extent).

    The file may be cropped or shifted in rows and columns (pixels outside
    the cine are refused: it is not this cine's segmentation), and must cover
    the cine's frames (a file without a reference geometry may cover fewer).
    """
    cine_grid = (frame_stack_matrix(spacing_mm), (n_frames, rows, cols), True)
    name = getattr(seg, "path", "") or "segmentation"
    own = grid_of(seg)
    try:
        grid = common_grid([cine_grid, own], ["the cine", name])
    except CacError as exc:
        raise CacError(str(exc).replace("compare segmentations of the same cine",
                                        "use the annotation made on this cine")) from None
    if grid.shape != (n_frames, rows, cols):
        k, j, i = grid.offsets[1]
        for mask in seg.segments.values():
            outside = np.ones(mask.shape, bool)
            jj, ii = j - grid.offsets[0][1], i - grid.offsets[0][2]
            r0, r1 = max(0, -jj), min(mask.shape[1], rows - jj)
            c0, c1 = max(0, -ii), min(mask.shape[2], cols - ii)
            if r1 > r0 and c1 > c0:
                outside[:, r0:r1, c0:c1] = False
            if (mask & outside).any():
                raise CacError(
                    f"{name} has pixels outside the cine's {rows}x{cols} frames; use the annotation made on this cine"
                )
    out = {}
    k0, j0, i0 = grid.offsets[0]
    for seg_name, mask in seg.segments.items():
        placed = grid.place(1, mask)
        out[seg_name] = placed[k0 : k0 + n_frames, j0 : j0 + rows, i0 : i0 + cols]
    return out


def check_not_cropped(name: str, ijk_to_ras, shape, cine_ijk_to_ras, cine_shape,
                      volume: str = "the cine's frame-stack volume", *, saved: bool = True) -> None:
    """Refuse a segmentation drawn over a cropped copy of the cine's frame-stack volume, in one line.

    The same pixel axes and frames as the volume but fewer rows or columns:
    it was drawn over a crop.  Its pixels could be put back on the cine only
    by the crop's origin, which nothing checks (a crop saved with its origin
    reset would land on the frames' corner), so such a segmentation is
    refused by ``cac dataset add``, ``cac evaluate`` and ``cac identify
    --annotations`` (its files) and by CAC Annotator and CAC Identifier (its
    nodes: :func:`CACIdentifierLib.mrml.check_nodes_not_cropped`), alike.  A
    file saved cropped to its minimum extent keeps the whole volume as its
    reference geometry and passes.  Other grids (another spacing or axes,
    another frame count, a larger frame) are left to the callers' own
    checks, which name them as another cine's.

    Parameters
    ----------
    name : str
        The segmentation as the line names it (a file's path, ``"segmentation 'A'"``).
    ijk_to_ras : array_like or None
        4x4 matrix of the segmentation's reference image geometry (the volume it was drawn over).
    shape : tuple of int or None
        ``(frames, rows, columns)`` of that geometry; None (no reference geometry recorded): not checked.
    cine_ijk_to_ras : array_like or None
        4x4 matrix of the cine's frame-stack volume; None: the axes are not compared.
    cine_shape : tuple of int
        ``(frames, rows, columns)`` of the cine's frame-stack volume.
    volume : str
        How the line names the volume.
    saved : bool
        A file (True): the remedy ends "and save it again"; a node in the scene (False): it does not.

    Raises
    ------
    CacError
        One line: what was cropped from what, and what to do.

    Examples
    --------
    >>> check_not_cropped("a.seg.nrrd", np.diag([-1.0, -1, 1, 1]), (4, 30, 32), np.diag([-1.0, -1, 1, 1]), (4, 48, 48))
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: a.seg.nrrd was drawn over a cropped copy of the cine's frame-stack volume \
(30 x 32 of its 48 x 48 px), so where it lies on the frames cannot be checked; in Slicer's Segment Editor give it \
the geometry of the cine's frame-stack volume ('Specify geometry') and save it again, or draw it over the cine's \
frame-stack volume
    >>> check_not_cropped("a.seg.nrrd", np.diag([-1.0, -1, 1, 1]), (4, 48, 48), np.diag([-1.0, -1, 1, 1]), (4, 48, 48))
    """
    if ijk_to_ras is None or shape is None:
        return
    own, whole = tuple(int(v) for v in shape), tuple(int(v) for v in cine_shape)
    if own[0] != whole[0] or own[1:] == whole[1:] or own[1] > whole[1] or own[2] > whole[2]:
        return
    if cine_ijk_to_ras is not None:
        axes, cine_axes = np.asarray(ijk_to_ras, float)[:3, :3], np.asarray(cine_ijk_to_ras, float)[:3, :3]
        scale = float(np.linalg.norm(cine_axes, axis=0).min())
        if not np.allclose(axes, cine_axes, rtol=1e-3, atol=1e-3 * scale):
            return
    raise CacError(f"{name} was drawn over a cropped copy of {volume} ({own[1]} x {own[2]} of its {whole[1]} x "
                   f"{whole[2]} px), so where it lies on the frames cannot be checked; in Slicer's Segment Editor give "
                   f"it the geometry of {volume} ('Specify geometry'){' and save it again' if saved else ''}, or draw "
                   f"it over {volume}")


def check_none_cropped(files, names=None) -> None:
    """:func:`check_not_cropped` for segmentation files of one cine compared without the cine (``cac evaluate``).

    The cine's frame-stack volume is known here only through the files'
    reference geometries: the largest rows and columns among them (on the
    same frames and axes) stand for it, and a file whose reference geometry
    has fewer is refused.  Files without a reference geometry are not
    checked (their grid is their labelmap's own extent), nor can files all
    drawn over one same crop be told (none is larger): those are compared
    with each other as they lie.

    Parameters
    ----------
    files : list of :class:`~CACIdentifierLib.nrrd_io.SegFile`
        The files as read (:func:`~CACIdentifierLib.nrrd_io.read_seg_nrrd` without ``expected_shape``).
    names : list of str, optional
        How the line names each file (default: its path).

    Examples
    --------
    >>> from CACIdentifierLib.nrrd_io import SegFile
    >>> whole = SegFile({"c": np.zeros((4, 48, 48), bool)}, (1.0, 1.0), path="whole.seg.nrrd",
    ...                 ijk_to_ras=np.diag([-1.0, -1, 1, 1]), has_reference=True)
    >>> crop = SegFile({"c": np.zeros((4, 30, 48), bool)}, (1.0, 1.0), path="crop.seg.nrrd",
    ...                ijk_to_ras=np.diag([-1.0, -1, 1, 1]), has_reference=True)
    >>> check_none_cropped([whole, whole])
    >>> check_none_cropped([whole, crop])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: crop.seg.nrrd was drawn over a cropped copy of the cine's frame-stack volume \
(30 x 48 of its 48 x 48 px), ...
    """
    names = names or [getattr(f, "path", "") for f in files]
    grids = [(_name(names, n), *grid_of(f)) for n, f in enumerate(files)]
    grids = [(name, matrix, shape) for name, matrix, shape, has_reference in grids if has_reference]
    if len(grids) < 2:
        return
    _, matrix, shape = max(grids, key=lambda g: g[2][1] * g[2][2])
    whole = (shape[0], max(g[2][1] for g in grids), max(g[2][2] for g in grids))
    for name, own_matrix, own_shape in grids:
        check_not_cropped(name, own_matrix, own_shape, matrix, whole)


def check_same_source(items, *, ignore: bool = False, advice: str = "compare segmentations of the same cine",
                      override: str = "--ignore-source", warn_missing: bool = True,
                      first_is_cine: bool = False) -> str | None:
    """Refuse inputs that record different source cines; return the common fingerprint (None if none).

    ``items`` is a list of ``(name, fingerprint or None)``: a segmentation's
    :attr:`~CACIdentifierLib.nrrd_io.SegFile.source_fingerprint`, or a cine's
    own fingerprint.  Two different fingerprints raise :class:`CacError` (one
    line naming both files and the first 8 hex digits of each), unless
    ``ignore``: then a warning.  With ``first_is_cine`` the first item is the
    cine itself and the others its segmentations: the line names the
    segmentation that was drawn on another cine.  Inputs without a fingerprint
    get one warning (:func:`warn_unrecorded`; later, or never, with
    ``warn_missing=False``): they cannot be checked.

    >>> a, b = "pixels-sha256:" + "1" * 64, "pixels-sha256:" + "2" * 64
    >>> check_same_source([("a", a), ("b", b)])
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: a and b are segmentations of different cines (source fingerprints 11111111 and 22222222); compare segmentations of the same cine, or pass --ignore-source to compare them anyway
    >>> check_same_source([("the cine", a), ("b", b)], first_is_cine=True, advice="use the annotations made on it")
    Traceback (most recent call last):
    ...
    CACIdentifierLib.errors.CacError: b was drawn on another cine (it records source fingerprint 22222222, the cine's is 11111111); use the annotations made on it, or pass --ignore-source to use it anyway
    """
    known = [(name, fp) for name, fp in items if fp]
    if warn_missing:
        warn_unrecorded(items)
    if not known:
        return None
    first_name, first = known[0]
    cine = first_is_cine and bool(items) and items[0][1] == first
    for name, fp in known[1:]:
        if fp == first:
            continue
        if cine:
            message = (f"{name} was drawn on another cine (it records source fingerprint {short_fingerprint(fp)}, "
                       f"the cine's is {short_fingerprint(first)})")
            anyway, done = "use it anyway", "used anyway"
        else:
            message = (f"{first_name} and {name} are segmentations of different cines (source fingerprints "
                       f"{short_fingerprint(first)} and {short_fingerprint(fp)})")
            anyway, done = "compare them anyway", "compared anyway"
        if not ignore:
            raise CacError(f"{message}; {advice}, or pass {override} to {anyway}")
        warnings.warn(f"{message}; {done} ({override})", CacWarning, stacklevel=2)
    return first


def warn_unrecorded(items) -> None:
    """One warning naming the inputs of ``items`` ``(name, fingerprint or None)`` that record no source cine."""
    missing = [str(name) for name, fp in items if not fp]
    if missing:
        who = missing[0] + " does" if len(missing) == 1 else f"{len(missing)} files ({missing[0]}, ...) do"
        warnings.warn(f"{who} not record the cine they were drawn on (saved by Slicer or an older cac); "
                      "checked by their grid only", CacWarning, stacklevel=2)
