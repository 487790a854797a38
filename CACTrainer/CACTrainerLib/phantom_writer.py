"""Writing phantom acquisitions and datasets to disk; reading the manifest back.

Layout of a dataset folder::

    manifest.json                     the list of acquisitions (what training reads)
    P001/A01/cine.dcm                 DICOM XA multi-frame (X-Ray Angiographic Image Storage)
    P001/A01/annotator1.seg.nrrd      annotator 1..3: calcium on the non-contrast frames
    P001/A01/annotator2.seg.nrrd
    P001/A01/annotator3.seg.nrrd
    P001/A01/majority.seg.nrrd        per-pixel majority of the three (the ground truth of the paper)
    P001/A01/truth.seg.nrrd           the exact projected calcium footprint in every frame
    P001/A01/truth.json               phase, onset, heart rate, calcifications per frame, geometry

The whole folder is built aside and moved in place at the end
(:func:`CACIdentifierLib.fileutil.atomic_directory`): there is never a
half-written dataset, and an existing one is only replaced with ``overwrite``.
``overwrite`` replaces only a phantom dataset (:func:`previous_phantom`): an
empty folder, or one whose ``manifest.json`` has format
``cac-phantom-dataset/1``; the earlier phantom's patient folders that the new
one does not write are removed afterwards (only the files its manifest lists).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from CACIdentifierLib.errors import CacError, printable
from CACIdentifierLib.fileutil import atomic_directory, atomic_output

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
MANIFEST = "manifest.json"
CALCIUM_COLOR = (0.95, 0.85, 0.1)
PATH_KEYS = ("cine", "majority", "truth", "truth_seg")
FORMAT = "cac-phantom-dataset/1"
# The files write_dataset puts in a dataset folder (besides manifest.json): only these are ever removed.
_PHANTOM_FILE = re.compile(r"P\d{3}/A\d{2}/(?:cine\.dcm|annotator\d\.seg\.nrrd|majority\.seg\.nrrd|truth\.json"
                           r"|truth\.seg\.nrrd)")


def _ds(x: float) -> str:
    """A DICOM decimal string of at most 16 characters."""
    return f"{float(x):.6g}"


def uids(seed: int, patient: int, acquisition: int) -> dict:
    """Deterministic UIDs (pydicom.uid.generate_uid with entropy sources) for one acquisition."""
    from pydicom.uid import generate_uid

    base = ["cac-phantom", str(int(seed)), str(int(patient))]
    return {
        "StudyInstanceUID": generate_uid(entropy_srcs=base + ["study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=base + [str(int(acquisition)), "series"]),
        "SOPInstanceUID": generate_uid(entropy_srcs=base + [str(int(acquisition)), "sop"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=base + [str(int(acquisition)), "for"]),
    }


def patient_id(patient: int) -> str:
    return f"P{patient + 1:03d}"


def acquisition_id(patient: int, acquisition: int) -> str:
    return f"{patient_id(patient)}_A{acquisition + 1:02d}"


def write_dicom(path, acq, *, compression: str = "none", overwrite: bool = False) -> Path:
    """Write ``acq`` as a DICOM XA multi-frame file (uncompressed or RLE Lossless).

    Tags: SOP Class X-Ray Angiographic Image Storage, Modality XA, FrameTime,
    CineRate, RecommendedDisplayFrameRate, ImagerPixelSpacing,
    DistanceSourceToDetector, DistanceSourceToPatient,
    EstimatedRadiographicMagnificationFactor (ImagerPixelSpacing /
    magnification = the isocentre spacing of the truth), the positioner angles,
    patient/study/series/SOP identifiers (deterministic per seed), BitsStored;
    the R Wave Pointer only when ``params.ecg`` was set.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.tag import Tag
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    if compression not in ("none", "rle"):
        raise CacError(f"unknown compression {compression!r}; use none or rle")
    t = acq.truth
    ids = uids(t["seed"], t["patient"], t["acquisition"])
    n, rows, cols = acq.frames.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = ids["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = "SLICERCAC_PH1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SOPClassUID = XA_SOP_CLASS
    ds.SOPInstanceUID = ids["SOPInstanceUID"]
    date = f"2025{1 + t['patient'] % 12:02d}{1 + t['patient'] % 28:02d}"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    tm = f"{9 + t['acquisition'] % 9:02d}{(7 * t['acquisition']) % 60:02d}00"
    ds.StudyTime = "090000"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tm
    ds.AccessionNumber = ""
    ds.Modality = "XA"
    ds.Manufacturer = "SlicerCAC phantom"
    ds.ManufacturerModelName = "cac phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic coronary angiography (CAC phantom)"
    ds.SeriesDescription = f"{t['side'].upper()} coronary {t['view']['primary_deg']:+.0f}/{t['view']['secondary_deg']:+.0f}"
    ds.PatientName = f"Phantom^{patient_id(t['patient'])}"
    ds.PatientID = f"PHANTOM-{t['seed']}-{patient_id(t['patient'])}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids["StudyInstanceUID"]
    ds.SeriesInstanceUID = ids["SeriesInstanceUID"]
    ds.FrameOfReferenceUID = ids["FrameOfReferenceUID"]
    ds.StudyID = patient_id(t["patient"])
    ds.SeriesNumber = t["acquisition"] + 1
    ds.InstanceNumber = 1
    ds.ContrastBolusAgent = "Iodinated contrast (synthetic)"
    ds.KVP = "80"
    ds.RadiationSetting = "GR"
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = _ds(t["view"]["primary_deg"])
    ds.PositionerSecondaryAngle = _ds(t["view"]["secondary_deg"])
    ds.DistanceSourceToDetector = _ds(t["view"]["sid_mm"])
    ds.DistanceSourceToPatient = _ds(t["view"]["sod_mm"])
    ds.EstimatedRadiographicMagnificationFactor = _ds(t["magnification"])
    ds.ImagerPixelSpacing = [_ds(t["imager_pixel_spacing_mm"])] * 2
    ds.FrameTime = _ds(t["frame_time_ms"])
    ds.CineRate = int(round(t["fps"]))
    ds.RecommendedDisplayFrameRate = int(round(t["fps"]))
    ds.StartTrim = 1
    ds.StopTrim = n
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)
    ds.NumberOfFrames = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 if acq.frames.dtype == np.uint8 else 16
    ds.BitsStored = int(acq.bits)
    ds.HighBit = int(acq.bits) - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = "Synthetic phantom (SlicerCAC): not patient data"
    if t["params"].get("ecg"):
        ds.RWavePointer = [int(round(f)) + 1 for f in t["r_wave_frames"]]
    ds.PixelData = np.ascontiguousarray(acq.frames).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    if compression == "rle":
        ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    with atomic_output(path, overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def write_acquisition(folder, acq, *, compression: str = "none", overwrite: bool = False) -> dict:
    """Write one acquisition's files into ``folder``; return the relative file names."""
    from CACIdentifierLib import nrrd_io
    from CACIdentifierLib.cine import pixel_fingerprint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"cine": "cine.dcm", "annotators": [f"annotator{i + 1}.seg.nrrd" for i in range(3)],
             "majority": "majority.seg.nrrd", "truth": "truth.json", "truth_seg": "truth.seg.nrrd"}
    write_dicom(folder / files["cine"], acq, compression=compression, overwrite=overwrite)
    colors = {"calcium": CALCIUM_COLOR}
    # The pixel data is written as is (PixelData = the frames' bytes): the cine read back has these pixels.
    source = pixel_fingerprint(acq.frames)
    for name, mask in zip(files["annotators"], acq.annotators):
        nrrd_io.write_seg_nrrd(folder / name, {"calcium": mask}, acq.spacing_mm, colors=colors, overwrite=overwrite,
                            source_fingerprint=source)
    nrrd_io.write_seg_nrrd(folder / files["majority"], {"calcium": acq.majority}, acq.spacing_mm, colors=colors,
                        overwrite=overwrite, source_fingerprint=source)
    nrrd_io.write_seg_nrrd(folder / files["truth_seg"], {"calcium": acq.calcium}, acq.spacing_mm, colors=colors,
                        overwrite=overwrite, source_fingerprint=source)
    with atomic_output(folder / files["truth"], overwrite) as tmp:
        tmp.write_text(json.dumps(acq.truth, indent=1))
    return files


def calcium_free_patients(n_patients: int, fraction: float, seed: int) -> set[int]:
    """Which patients get no calcium: ``round(fraction * n)``, but with two or more patients at
    least one when ``fraction > 0`` and at least one calcified when ``fraction < 1``; chosen
    reproducibly from ``seed``.  A single patient is calcium-free only if ``fraction >= 0.5``."""
    if n_patients <= 0 or fraction <= 0:
        return set()
    k = int(round(fraction * n_patients))
    if n_patients >= 2:
        k = max(k, 1)
        if fraction < 1:
            k = min(k, n_patients - 1)
    k = min(k, n_patients)
    order = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xCA1C]).permutation(n_patients)
    return {int(i) for i in order[:k]}


def previous_phantom(out_dir) -> list[Path]:
    """Check that ``write_dataset(out_dir, overwrite=True)`` may replace what is in ``out_dir``.

    Returns the files (absolute) that the phantom dataset there lists: none for a
    missing or empty folder.  Refused (:class:`CacError`): a folder holding
    anything else, e.g. a ``cac dataset`` dataset (format ``cac-dataset/1``), a
    manifest of another format, or files without a manifest; ``--overwrite``
    never replaces data that ``cac phantom`` did not write.
    """
    target = Path(out_dir)
    if not target.is_dir():
        return []  # missing (created), or a file (refused by atomic_directory)
    try:
        if not any(target.iterdir()):
            return []
    except OSError as exc:
        raise CacError(f"cannot read folder {out_dir} ({exc.strerror or type(exc).__name__}); "
                       "choose another OUT_DIR") from None
    choose = "--overwrite replaces only a dataset written by `cac phantom`; choose another OUT_DIR"
    path = target / MANIFEST
    if not path.is_file():
        raise CacError(f"{out_dir} is a non-empty folder without a phantom manifest.json, not a dataset "
                       f"written by `cac phantom`; {choose}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError):
        manifest = None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        if fmt == "cac-dataset/1":
            what = "a real-data dataset built by `cac dataset` (manifest format cac-dataset/1)"
        elif isinstance(fmt, str):
            what = f"not a phantom dataset (manifest format {printable(fmt, 60)!r}, not {FORMAT})"
        else:
            what = f"not a phantom dataset (its manifest.json has no format {FORMAT})"
        raise CacError(f"{out_dir} is {what}; {choose}")
    try:
        entries = load_manifest(target)
    except CacError as exc:
        raise CacError(f"{exc} (phantom folder {out_dir}); remove it yourself or choose another OUT_DIR") from None
    files = []
    for e in entries:
        files += [e[key] for key in PATH_KEYS if e.get(key)] + list(e["annotators"])
    return [Path(f) for f in files]


def _remove_stale(out_dir, files, keep) -> None:
    """Delete the earlier phantom's ``files`` that the new dataset did not write again (``keep``: its
    files), then their acquisition and patient folders if that left them empty.  Only files the
    phantom writes (``P001/A01/cine.dcm`` ...) inside ``out_dir`` are touched."""
    root = Path(out_dir).resolve()
    folders = set()
    for f in files:
        try:
            rel = f.relative_to(root)
            if rel.as_posix() in keep or not _PHANTOM_FILE.fullmatch(rel.as_posix()):
                continue
            if not f.resolve().is_relative_to(root):
                continue  # reached through a symbolic link: not the phantom's
            f.unlink(missing_ok=True)
        except (ValueError, OSError):
            continue
        folders.update((root / rel.parent, root / rel.parts[0]))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty: the user's own files keep their folder
        except OSError:
            pass


def write_dataset(out_dir, params=None, *, patients: int = 1, acquisitions_per_patient: int = 1, seed: int = 0,
                  compression: str = "none", overwrite: bool = False, progress=None, command: str | None = None,
                  montage=None, randomize: bool = False) -> Path:
    """Generate and write a dataset of ``patients`` x ``acquisitions_per_patient`` cines.

    Returns the dataset folder.  ``progress(done, total, message)`` counts
    rendered frames over the whole dataset (it may raise
    ``progress.Cancelled``: nothing is left behind).  ``montage``: a PNG path
    for a montage of the first acquisition (written after the dataset).  See
    the module docstring for the layout and :func:`load_manifest` for reading
    it back.  ``randomize``: each patient's domain (dose, display, bits, metal, calcium...) is drawn
    by :func:`.phantom_domain.randomized_params`; frames, frame rate, size and every setting it does
    not draw (heart rate, contrast, onset, side, ECG ...) come from ``params``.
    """
    import numpy as np

    from .phantom import PhantomParams, generate_acquisition
    from .phantom_domain import randomized_params

    params = params or PhantomParams()
    params.validate()
    if patients < 1 or acquisitions_per_patient < 1:
        raise CacError("need at least one patient and one acquisition per patient")
    # Before any work: --overwrite replaces only an earlier phantom (never the user's own data).
    old_files = previous_phantom(out_dir) if overwrite else []
    free = calcium_free_patients(patients, params.calcium_free_fraction, seed)
    total = patients * acquisitions_per_patient
    n = params.n_frames
    entries = []
    first = None
    with atomic_directory(out_dir, overwrite) as tmp:
        done = 0
        for p in range(patients):
            for a in range(acquisitions_per_patient):
                inner = None
                if progress is not None:
                    label = acquisition_id(p, a)

                    def inner(k, _n, _msg, base=done * n, label=label):
                        progress(base + k, total * n, f"{label} frame {k}/{n}")

                    progress(done * n, total * n, acquisition_id(p, a))
                acq_params = params
                if randomize:
                    # The user's other settings (heart rate, contrast, side, ECG ...) stay; truth.json records
                    # each acquisition's drawn ones.
                    acq_params = randomized_params(np.random.default_rng([int(seed), p, 0xD0]), n_frames=params.n_frames,
                                                   size=params.rows, fps=params.fps,
                                                   calcium_free_fraction=params.calcium_free_fraction, base=params)
                    if params.annotator_min_snr > 0:  # the user's visibility threshold wins
                        acq_params.annotator_min_snr = params.annotator_min_snr
                acq = generate_acquisition(acq_params, seed, p, a, calcium_free=p in free, progress=inner)
                if montage is not None and first is None:
                    first = acq
                rel = Path(patient_id(p)) / f"A{a + 1:02d}"
                files = write_acquisition(tmp / rel, acq, compression=compression)
                t = acq.truth
                n_visible = sum(any(f["visible"] for f in d["frames"]) for d in t["calcifications"])
                entries.append({
                    "id": acquisition_id(p, a), "patient": patient_id(p), "patient_index": p,
                    "acquisition_index": a, "side": t["side"],
                    "projection": {"primary_deg": t["view"]["primary_deg"],
                                   "secondary_deg": t["view"]["secondary_deg"]},
                    "cine": str(rel / files["cine"]),
                    "annotators": [str(rel / f) for f in files["annotators"]],
                    "majority": str(rel / files["majority"]),
                    "truth": str(rel / files["truth"]),
                    "truth_seg": str(rel / files["truth_seg"]),
                    "n_frames": params.n_frames, "frame_time_ms": t["frame_time_ms"],
                    "spacing_mm": t["spacing_mm"], "onset_frame": t["onset_frame"],
                    "heart_rate_bpm": t["heart_rate_bpm"],
                    "calcium_free": p in free, "n_calcifications": n_visible,
                })
                done += 1
                del acq
        manifest = {"format": FORMAT, "seed": int(seed), "patients": patients,
                    "acquisitions_per_patient": acquisitions_per_patient, "compression": compression,
                    "params": params.to_dict(), "randomize": bool(randomize), "command": command,
                    "acquisitions": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # The new manifest is in place; what the earlier phantom wrote and this one did not (P002 or P001/A02 of
    # a bigger run) goes.  The user's own files stay, also inside the patient folders (atomic_directory).
    new_files = {Path(f).as_posix() for e in entries for f in [*(e[k] for k in PATH_KEYS if e.get(k)),
                                                                *e["annotators"]]}
    _remove_stale(out_dir, old_files, new_files)
    if montage is not None and first is not None:
        save_montage(first, montage, overwrite=overwrite)
    if progress is not None:
        progress(total * n, total * n, "done")
    return Path(out_dir)


def load_manifest(dataset_dir) -> list[dict]:
    """The acquisitions of a dataset folder, with absolute paths (str) for cine, annotators,
    majority, truth and truth_seg.

    The manifest is checked: an object whose ``acquisitions`` is a list of
    objects; ``id`` and ``patient`` strings; every path a relative path that
    stays inside the dataset folder (a manifest cannot make training read
    files elsewhere).
    """
    root = Path(dataset_dir).resolve()
    path = root / MANIFEST
    if not path.is_file():
        raise CacError(f"{path} not found; is {dataset_dir} a dataset written by `cac phantom`?")

    def bad(what: str) -> CacError:
        return CacError(f"{path} is not a valid dataset manifest ({what}); regenerate the dataset")

    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError) as exc:
        raise bad(printable(" ".join(str(exc).split()), 120)) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("acquisitions"), list):
        raise bad("no list of acquisitions")
    entries = manifest["acquisitions"]

    def inside(value, key: str, i: int) -> str:
        if not isinstance(value, str) or not value:
            raise bad(f"acquisition {i}: {key} is not a file name")
        relative = Path(value)
        # Judged on the path as written: a symlink the user put in the folder is theirs to make.
        if relative.is_absolute() or ".." in relative.parts or "\x00" in value:
            raise bad(f"acquisition {i}: {key} {printable(value, 80)!r} points outside the dataset folder")
        return str(root / relative)

    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise bad(f"acquisition {i} is not an object")
        e = dict(e)
        for key in ("id", "patient"):
            if key in e and not isinstance(e[key], (str, int)) or isinstance(e.get(key), bool):
                raise bad(f"acquisition {i}: {key} is not a name")
        if e.get("cine") is None:  # absent or null
            raise bad(f"acquisition {i} has no cine")
        for key in PATH_KEYS:
            if key in e and e[key] is not None:
                e[key] = inside(e[key], key, i)
        annotators = e.get("annotators", [])
        if not isinstance(annotators, list):
            raise bad(f"acquisition {i}: annotators is not a list")
        e["annotators"] = [inside(a, "annotators", i) for a in annotators]
        out.append(e)
    return out


def save_montage(acq, path, *, overwrite: bool = False, real_frames=None) -> Path:
    """A PNG montage of a phantom acquisition: non-contrast, contrast arriving, full contrast, the
    truth (red) and majority (yellow) contours on a non-contrast frame, and zooms on the largest
    deposit without and with contrast.  ``real_frames`` (list of (title, 2D array)) adds a row of
    real frames for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = acq.truth
    n = acq.frames.shape[0]
    onset = t["onset_frame"]
    vmax = 2 ** acq.bits - 1
    full = min(n - 1, onset + int(round(1.6 * t["fps"])))
    k_nc = max(0, onset // 2)
    panels = [(acq.frames[0], "frame 0 (no contrast)"), (acq.frames[onset], f"frame {onset} (onset)"),
              (acq.frames[full], f"frame {full} (contrast)")]
    deps = [d for d in t["calcifications"] if d["frames"][k_nc]["visible"]]
    cols = 5 if deps else 4
    rows = 2 if real_frames else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.3 * rows), squeeze=False)
    for ax, (im, title) in zip(axes[0], panels):
        ax.imshow(im, cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
    ax = axes[0][3]
    ax.imshow(acq.frames[k_nc], cmap="gray", vmin=0, vmax=vmax)
    if acq.calcium[k_nc].any():
        ax.contour(acq.calcium[k_nc], [0.5], colors="r", linewidths=0.6)
    if acq.majority[k_nc].any():
        ax.contour(acq.majority[k_nc], [0.5], colors="y", linewidths=0.6)
    ax.set_title(f"frame {k_nc}: truth (red), majority (yellow)", fontsize=9)
    if deps:
        d = max(deps, key=lambda d: d["frames"][k_nc]["area_px"])
        f = d["frames"][k_nc]
        r, c = int(round(f["row"])), int(round(f["col"]))
        h = max(24, acq.frames.shape[1] // 10)
        r0, c0 = max(0, r - h), max(0, c - h)
        # The contrast frame of the nearest phase, for the paired view.
        ph = np.asarray(t["phase"])
        cand = np.arange(full, n)
        dist = np.abs((ph[cand] - ph[k_nc] + 0.5) % 1.0 - 0.5)
        kc = int(cand[np.argmin(dist)]) if len(cand) else n - 1
        zoom_nc = acq.frames[k_nc, r0:r + h, c0:c + h].astype(float)
        zoom_c = acq.frames[kc, r0:r + h, c0:c + h].astype(float)
        lo, hi = np.percentile(zoom_nc, [1, 99])
        both = np.concatenate([zoom_nc, np.full((zoom_nc.shape[0], 2), hi), zoom_c], axis=1)
        ax = axes[0][4]
        ax.imshow(both, cmap="gray", vmin=lo, vmax=hi + 0.3 * (hi - lo))
        ax.contour(np.concatenate([acq.calcium[k_nc, r0:r + h, c0:c + h],
                                   np.zeros((zoom_nc.shape[0], 2 + zoom_c.shape[1]), bool)], axis=1),
                   [0.5], colors="r", linewidths=0.6)
        ax.set_title(f"deposit {d['id']} ({d['length_mm']:.1f} x {d['width_mm']:.1f} mm): "
                     f"frame {k_nc} | {kc}", fontsize=9)
    if real_frames:
        for ax, (title, im) in zip(axes[1], real_frames):
            ax.imshow(im, cmap="gray", vmin=0, vmax=float(np.iinfo(im.dtype).max) if im.dtype.kind == "u" else None)
            ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    view = t["view"]
    fig.suptitle(f"CAC phantom: seed {t['seed']} patient {t['patient']} acquisition {t['acquisition']}, "
                 f"{t['side']} coronary, {view['primary_deg']:+.0f}/{view['secondary_deg']:+.0f} deg, "
                 f"{t['heart_rate_bpm']:.0f} bpm, {t['fps']:g} fps, spacing {t['spacing_mm'][0]:.2f} mm",
                 fontsize=10)
    fig.tight_layout()
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
