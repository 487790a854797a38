"""Cine input: real XA files, synthetic DICOM written with pydicom, image folders, blank frames, bad input."""

from __future__ import annotations

import datetime as dt
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from CACIdentifierLib import dicom_io
from CACIdentifierLib.cine_io import detect_blank_frames, load_cine, natural_sort_key, read_image_folder
from CACIdentifierLib.errors import CacError, CacWarning
from conftest import BIPLANE, GE, LCA_FRAMES, RCA, needs_data, require
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

XA_SOP = "1.2.840.10008.5.1.4.1.1.12.1"
ENHANCED_XA_SOP = "1.2.840.10008.5.1.4.1.1.12.1.1"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rca():
    return load_cine(require(RCA))


@pytest.fixture(scope="module")
def biplane():
    return load_cine(require(BIPLANE))


@pytest.fixture(scope="module")
def ge():
    return load_cine(require(GE))


def make_xa(frames: np.ndarray, *, sop_class=XA_SOP, modality="XA", bits_stored=None, **tags) -> Dataset:
    """A minimal but valid multi-frame XA dataset (Explicit VR Little Endian) holding ``frames``."""
    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PHANTOM-1"
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[-2]), int(frames.shape[-1])
    if frames.ndim == 3:
        ds.NumberOfFrames = int(frames.shape[0])
    ds.BitsAllocated = 8 * frames.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def ramp_frames(n=5, rows=64, cols=80, dtype=np.uint16, maximum=4095, seed=0) -> np.ndarray:
    """Distinct frames with structure (a moving bright bar over noise)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(maximum // 8, maximum // 2, size=(n, rows, cols)).astype(dtype)
    for k in range(n):
        frames[k, :, 5 + 3 * k : 12 + 3 * k] = maximum
    return frames


# Slicer 5.8 and 5.10 bundle pydicom 2.4.4: the Lib and these tests run with pydicom 2.4 and 3.x.
PYDICOM3 = int(pydicom.__version__.split(".")[0]) >= 3


def make_presentation_state() -> Dataset:
    """A DICOM object without an image (a Grayscale Softcopy Presentation State): what a user may pick instead of the cine."""
    ds = make_xa(ramp_frames(n=2), sop_class="1.2.840.10008.5.1.4.1.1.11.1", modality="PR")
    for keyword in ("PixelData", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble, file meta) in its file meta's transfer syntax."""
    if PYDICOM3:
        ds.save_as(path, enforce_file_format=True)
    else:
        syntax = ds.file_meta.TransferSyntaxUID
        ds.is_little_endian = syntax != "1.2.840.10008.1.2.2"
        ds.is_implicit_VR = syntax == "1.2.840.10008.1.2"
        ds.save_as(path, write_like_original=False)
    return path


def save_bare(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as old files were: implicit VR little endian, no preamble, no file meta."""
    if PYDICOM3:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, True
        ds.save_as(path, write_like_original=True)
    return path


def decode_with(path: Path, plugin: str) -> np.ndarray:
    """pydicom's decode of ``path`` with one decoder ("pylibjpeg" or "pillow")."""
    if PYDICOM3:
        from pydicom.pixels import pixel_array

        return pixel_array(str(path), decoding_plugin=plugin)
    import pydicom.config
    from pydicom.pixel_data_handlers import pillow_handler, pylibjpeg_handler

    handler = {"pylibjpeg": pylibjpeg_handler, "pillow": pillow_handler}[plugin]
    saved = pydicom.config.pixel_data_handlers
    pydicom.config.pixel_data_handlers = [handler]
    try:
        return pydicom.dcmread(path).pixel_array
    finally:
        pydicom.config.pixel_data_handlers = saved


# --------------------------------------------------------------------------- real files


@needs_data
def test_rca_facts(rca):
    assert rca.frames.shape == (96, 512, 512) and rca.frames.dtype == np.uint8
    assert rca.frame_time_ms == pytest.approx(33.0)
    assert rca.r_wave_frames == [19, 52, 76]  # R Wave Pointer [20, 53, 77] is 1-based
    assert rca.spacing_mm is None and rca.spacing_source == "unknown"
    assert rca.bits_stored == 8 and rca.modality == "XA"
    assert rca.transfer_syntax == "1.2.840.10008.1.2.4.50"
    assert dicom_io.transfer_syntax_name(rca.transfer_syntax).startswith("JPEG Baseline")
    assert rca.identifiers["PatientID"] == "556342B"
    assert rca.identifiers["SOPInstanceUID"] == "1.3.12.2.1107.5.4.3.321890.19960124.162922.29"
    assert rca.blank_frames == []
    assert rca.ecg_present and rca.ecg is not None and rca.ecg.source == "curve-5000"


@needs_data
def test_rca_ecg_curve_is_aligned_with_r_wave_pointer(rca):
    """The curve's R peaks fall in the frames the R Wave Pointer names (an independent record of the beat)."""
    ecg = rca.ecg
    assert ecg.samples.shape == (3840,) and ecg.times_ms.shape == (3840,)  # 40 samples per frame
    assert ecg.times_ms[0] == 0.0 and ecg.times_ms[-1] < 96 * 33.0
    assert np.all(np.diff(ecg.times_ms) > 0)
    for frame in rca.r_wave_frames:
        window = (ecg.times_ms >= (frame - 1) * 33.0) & (ecg.times_ms < (frame + 2) * 33.0)
        peak_time = ecg.times_ms[window][np.argmax(ecg.samples[window])]
        assert abs(peak_time / 33.0 - (frame + 0.5)) <= 1.0, (frame, peak_time)
    # and they are the tallest peaks of the trace (QRS), well above its median
    assert ecg.samples.max() > np.median(ecg.samples) + 50


@needs_data
def test_biplane_facts(biplane):
    assert biplane.frames.shape == (17, 512, 512)
    assert biplane.frame_time_ms == pytest.approx(66.0)
    assert biplane.r_wave_frames == [0, 11]
    assert biplane.ecg is not None and biplane.ecg.samples.size == 17 * 80
    assert biplane.ecg.times_ms[-1] < 17 * 66.0
    assert biplane.blank_frames == [0]  # the blank white exposure frame, and only it


@needs_data
def test_ge_phantom_facts(ge):
    assert ge.frames.shape == (16, 512, 512)
    assert ge.frame_time_ms == pytest.approx(66.6667)
    assert ge.transfer_syntax == "1.2.840.10008.1.2.4.70"
    # EstimatedRadiographicMagnificationFactor 1.29306 is SID/SOD = 931/720 rounded
    assert ge.spacing_source == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    assert ge.spacing_mm == pytest.approx((0.390625 / 1.29306,) * 2, rel=1e-12)
    assert ge.spacing_mm == pytest.approx((0.390625 / (931 / 720),) * 2, rel=1e-4)
    assert ge.r_wave_frames is None and ge.ecg is None and not ge.ecg_present
    assert ge.blank_frames == []
    assert ge.identifiers["Manufacturer"] == "GE MEDICAL SYSTEMS"


@needs_data
def test_ge_spacing_from_sid_sod_and_unknown(tmp_path):
    ds = pydicom.dcmread(GE)
    del ds.EstimatedRadiographicMagnificationFactor
    cine = load_cine(save(ds, tmp_path / "no-ermf.dcm"))
    assert cine.spacing_source == "ImagerPixelSpacing/(SID/SOD)"
    assert cine.spacing_mm == pytest.approx((0.390625 / (931 / 720),) * 2, rel=1e-12)
    del ds.DistanceSourceToDetector
    with pytest.warns(CacWarning, match="no magnification"):
        cine = load_cine(save(ds, tmp_path / "no-sid.dcm"))
    assert cine.spacing_mm is None and cine.spacing_source == "unknown"
    # the user's value fills in what the file lacks
    with pytest.warns(CacWarning):
        cine = load_cine(tmp_path / "no-sid.dcm", spacing_mm=0.3)
    assert cine.spacing_mm == (0.3, 0.3) and cine.spacing_source == "user"


@needs_data
def test_file_values_win_over_user_values(ge):
    with pytest.warns(CacWarning, match="file's own value wins"):
        cine = load_cine(GE, frame_time_ms=40.0, spacing_mm=0.5)
    assert cine.frame_time_ms == pytest.approx(66.6667)
    assert cine.spacing_mm == ge.spacing_mm


@needs_data
def test_jpeg_lossless_pixels_equal_independent_decoder(ge):
    sitk = pytest.importorskip("SimpleITK")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(GE)))  # GDCM, not pydicom
    assert reference.shape == ge.frames.shape
    assert np.array_equal(reference, ge.frames)


@needs_data
@pytest.mark.parametrize("path", [RCA, BIPLANE], ids=["rca", "biplane"])
def test_jpeg_baseline_pixels_match_other_decoders(path):
    ours = load_cine(path).frames
    # identical to pydicom's own libjpeg decode of the file
    assert np.array_equal(ours, decode_with(path, "pylibjpeg"))
    # JPEG Baseline's IDCT is not bit-exact across libraries: Pillow (libjpeg-turbo) and GDCM
    # agree with each other and differ from libjpeg by at most one grey level on a few % of pixels.
    others = [decode_with(path, "pillow")]
    sitk = pytest.importorskip("SimpleITK")
    others.append(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    for other in others:
        diff = np.abs(ours.astype(int) - other.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05


@needs_data
def test_image_folder_lca():
    from skimage import io as skio

    with pytest.warns(CacWarning, match=r"ignored: proj0_montage\.png$"):  # beside the frames, not a frame
        cine = load_cine(LCA_FRAMES, spacing_mm=0.308 / 1.4014)
    assert cine.frames.shape == (37, 512, 512) and cine.frames.dtype == np.uint8
    assert cine.frame_time_ms is None
    assert cine.spacing_mm == pytest.approx((0.308 / 1.4014,) * 2) and cine.spacing_source == "user"
    assert cine.transfer_syntax is None and not cine.ecg_present
    assert cine.blank_frames == []
    for k in (0, 8, 9, 36):  # natural order: frame 9 is IM0_10.jpg
        reference = skio.imread(LCA_FRAMES / f"IM0_{k + 1:02d}.jpg")
        assert np.array_equal(cine.frames[k], reference)


@needs_data
def test_image_folder_without_user_values():
    with pytest.warns(CacWarning):
        cine = read_image_folder(LCA_FRAMES, frame_time_ms=66.7)
    assert cine.spacing_mm is None and cine.spacing_source == "unknown"
    assert cine.frame_time_ms == 66.7


def test_natural_sort_key():
    names = ["IM0_10.jpg", "IM0_2.jpg", "im0_1.jpg", "IM0_01b.jpg"]
    assert sorted(names, key=natural_sort_key) == ["im0_1.jpg", "IM0_01b.jpg", "IM0_2.jpg", "IM0_10.jpg"]


def test_image_folder_png16_and_rgb(tmp_path):
    from PIL import Image

    frames = ramp_frames(n=3, dtype=np.uint16, maximum=4095)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{k + 1}.png")
    cine = load_cine(tmp_path, frame_time_ms=50)
    assert cine.frames.dtype == np.uint16 and np.array_equal(cine.frames, frames)
    assert cine.bits_stored == 12 and cine.frame_time_ms == 50

    grey = tmp_path / "grey"
    grey.mkdir()
    for k, frame in enumerate((frames >> 4).astype(np.uint8)):
        Image.fromarray(np.stack([frame] * 3, axis=-1)).save(grey / f"g{k}.png")  # grey stored as RGB
    cine = load_cine(grey)
    assert np.array_equal(cine.frames, (frames >> 4).astype(np.uint8))


def test_image_folder_names_ignored_images(tmp_path):
    from PIL import Image

    frames = ramp_frames(n=4, dtype=np.uint8, maximum=255)
    for k, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"IM0_{k + 1}.png")
    # five stray images, one with a terminal escape in its name: named, printable, at most three
    for name in ("montage.png", "b\x1b[31m.png", "cover.jpg", "zz.png", "notes.tif"):
        Image.fromarray(frames[0]).save(tmp_path / name)
    with pytest.warns(CacWarning) as caught:
        cine = load_cine(tmp_path)
    assert cine.frames.shape[0] == 4
    (message,) = [str(w.message) for w in caught if "ignored" in str(w.message)]
    assert message.endswith("ignored: b\\x1b[31m.png, cover.jpg, montage.png and 2 more")
    assert message.startswith("5 image(s) in ") and message.isprintable()


# --------------------------------------------------------------------------- synthetic DICOM


def test_uncompressed_xa_round_trip(tmp_path):
    frames = ramp_frames()
    path = save(
        make_xa(frames, bits_stored=12, FrameTime="66.7", PixelSpacing=[0.25, 0.3], RWavePointer=[1, 4]),
        tmp_path / "xa.dcm",
    )
    cine = load_cine(path)
    assert cine.frames.dtype == np.uint16 and np.array_equal(cine.frames, frames)
    assert cine.frame_time_ms == pytest.approx(66.7)
    assert cine.spacing_mm == (0.25, 0.3) and cine.spacing_source == "PixelSpacing"
    assert cine.bits_stored == 12 and cine.r_wave_frames == [0, 3]
    assert cine.transfer_syntax == ExplicitVRLittleEndian
    assert cine.identifiers["PatientID"] == "PHANTOM-1"


def test_rle_xa_round_trip(tmp_path):
    frames = ramp_frames(n=4, dtype=np.uint16, maximum=1023, seed=3)
    ds = make_xa(frames, bits_stored=10, CineRate=15)
    ds.compress(RLELossless, frames)
    path = save(ds, tmp_path / "rle.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    cine = load_cine(path)
    assert np.array_equal(cine.frames, frames)
    assert cine.frame_time_ms == pytest.approx(1000 / 15)  # from CineRate
    assert cine.transfer_syntax == RLELossless


def test_monochrome1_is_inverted(tmp_path):
    frames = ramp_frames(n=3, dtype=np.uint8, maximum=200)
    ds = make_xa(frames, FrameTime=33)
    ds.PhotometricInterpretation = "MONOCHROME1"
    cine = load_cine(save(ds, tmp_path / "m1.dcm"))
    assert np.array_equal(cine.frames, 255 - frames)


def _functional_groups(
    n, *, shared: Dataset, start: dt.datetime, step_ms: float
) -> tuple[Sequence, Sequence]:
    per_frame = Sequence()
    for k in range(n):
        content = Dataset()
        content.FrameAcquisitionDateTime = (start + dt.timedelta(milliseconds=step_ms * k)).strftime(
            "%Y%m%d%H%M%S.%f"
        )
        content.FrameAcquisitionNumber = k + 1
        item = Dataset()
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    return Sequence([shared]), per_frame


def test_enhanced_xa_functional_groups(tmp_path):
    frames = ramp_frames(n=6, dtype=np.uint16, maximum=4095, seed=5)
    ds = make_xa(frames, sop_class=ENHANCED_XA_SOP, bits_stored=12)
    pixel_props = Dataset()
    pixel_props.ImagerPixelSpacing = [0.2, 0.2]
    geometry = Dataset()
    geometry.DistanceSourceToIsocenter = 750.0
    geometry.DistanceSourceToDetector = 1100.0
    shared = Dataset()
    shared.FramePixelDataPropertiesSequence = Sequence([pixel_props])
    shared.XRayGeometrySequence = Sequence([geometry])
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = _functional_groups(
        6, shared=shared, start=dt.datetime(2024, 5, 2, 10, 0, 0), step_ms=66.5
    )
    cine = load_cine(save(ds, tmp_path / "enhanced.dcm"))
    assert np.array_equal(cine.frames, frames)
    assert cine.spacing_source == "ImagerPixelSpacing/(SID/DistanceSourceToIsocenter)"
    assert cine.spacing_mm == pytest.approx((0.2 * 750 / 1100,) * 2)
    assert cine.frame_time_ms == pytest.approx(66.5, abs=1e-3)  # from the per-frame acquisition times

    # the same facts given per frame instead of shared
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.FramePixelDataPropertiesSequence = Sequence([pixel_props])
        item.XRayGeometrySequence = Sequence([geometry])
    shared_only = ds.SharedFunctionalGroupsSequence[0]
    del shared_only.FramePixelDataPropertiesSequence, shared_only.XRayGeometrySequence
    cine = load_cine(save(ds, tmp_path / "per-frame.dcm"))
    assert cine.spacing_mm == pytest.approx((0.2 * 750 / 1100,) * 2)

    # PixelMeasuresSequence (calibrated spacing) wins; FrameTimeVector gives the frame time
    measures = Dataset()
    measures.PixelSpacing = [0.15, 0.16]
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = Sequence([measures])
    ds.FrameTimeVector = [0, 40, 40, 41, 40, 40]
    cine = load_cine(save(ds, tmp_path / "enhanced2.dcm"))
    assert cine.spacing_mm == (0.15, 0.16) and cine.spacing_source == "PixelSpacing"
    assert cine.frame_time_ms == pytest.approx(40.0)


def test_waveform_ecg(tmp_path):
    """An ECG in a Waveform Sequence (5400,0100): samples and times come back through pydicom's waveform support."""
    frames = ramp_frames(n=4, dtype=np.uint8, maximum=250)
    ds = make_xa(frames, FrameTime=50)
    fs, n = 500.0, 100  # 0.2 s at 500 Hz
    lead = (1000 * np.sin(np.linspace(0, 4 * np.pi, n))).astype(np.int16)
    channel = Dataset()
    source = Dataset()
    source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "2:2", "MDC", "Lead II"
    channel.ChannelSourceSequence = Sequence([source])
    channel.ChannelSensitivity = "1"
    channel.ChannelSensitivityCorrectionFactor = "1"
    channel.ChannelBaseline = "0"
    channel.WaveformBitsStored = 16
    group = Dataset()
    group.MultiplexGroupTimeOffset = "10"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = n
    group.SamplingFrequency = str(fs)
    group.ChannelDefinitionSequence = Sequence([channel])
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = lead.tobytes()
    ds.WaveformSequence = Sequence([group])
    cine = load_cine(save(ds, tmp_path / "wave.dcm"))
    assert cine.ecg is not None and cine.ecg.source == "waveform" and cine.ecg_present
    assert np.allclose(cine.ecg.samples, lead)
    assert np.allclose(cine.ecg.times_ms, 10 + np.arange(n) * 2.0)


def test_dicom_folder_sorted_by_instance_number(tmp_path):
    frames = ramp_frames(n=5, dtype=np.uint16, maximum=4095, seed=7)
    series, study = generate_uid(), generate_uid()
    order = [3, 0, 4, 1, 2]  # file names deliberately out of order
    for name_index, k in enumerate(order):
        ds = make_xa(frames[k], PixelSpacing=[0.3, 0.3])
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.InstanceNumber = k + 1
        ds.AcquisitionTime = f"1200{k // 10:01d}{k % 10}.{0:06d}"  # 1 s apart
        save(ds, tmp_path / f"img{name_index}.dcm")
    (tmp_path / "notes.txt").write_text("not a frame")
    cine = load_cine(tmp_path)
    assert np.array_equal(cine.frames, frames)
    assert cine.frame_time_ms == pytest.approx(1000.0)  # from AcquisitionTime
    assert cine.spacing_mm == (0.3, 0.3)
    assert "SOPInstanceUID" not in cine.identifiers and cine.identifiers["SeriesInstanceUID"] == series

    # equal InstanceNumber: acquisition time decides
    for path in tmp_path.glob("img*.dcm"):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 1
        save(ds, path)
    assert np.array_equal(load_cine(tmp_path).frames, frames)

    other = make_xa(frames[0])  # another series
    save(other, tmp_path / "zz.dcm")
    with pytest.raises(CacError, match="mixes 2 series"):
        load_cine(tmp_path)


# --------------------------------------------------------------------------- blank frames


def test_blank_frame_rules_on_synthetic_frames():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    disk = (yy - 64) ** 2 + (xx - 64) ** 2 < 60**2
    frames = []
    for k in range(8):
        anatomy = 80 + 40 * np.sin(xx / (6 + k)) * np.cos(yy / 9) + rng.normal(0, 3, (128, 128))
        frames.append(np.where(disk, anatomy, 0))
    frames = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    assert detect_blank_frames(frames) == []
    frames[2] = 0  # no exposure: constant
    frames[4] = 255  # saturated
    frames[6] = (
        np.where(disk, 90 + rng.normal(0, 2, (128, 128)), 0).clip(0, 255).astype(np.uint8)
    )  # flat field
    assert detect_blank_frames(frames) == [2, 4, 6]


def test_blank_frames_do_not_flag_a_static_cine():
    rng = np.random.default_rng(2)
    base = rng.integers(50, 200, size=(64, 64)).astype(np.uint8)
    frames = np.stack([base] * 5)
    assert detect_blank_frames(frames) == []
    with pytest.raises(ValueError):
        detect_blank_frames(np.zeros((4, 4)))


@needs_data
def test_blank_frames_on_real_files(rca, biplane, ge):
    assert detect_blank_frames(rca.frames) == []
    assert detect_blank_frames(biplane.frames) == [0]
    assert detect_blank_frames(ge.frames) == []


# --------------------------------------------------------------------------- bad input


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CacError, match="does not exist"):
        load_cine(tmp_path / "nope.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CacError, match="is empty"):
        load_cine(empty)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(CacError, match="neither DICOM"):
        load_cine(empty)


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.bin"
    path.write_bytes(b"this is not a DICOM file\n" * 50)
    with pytest.raises(CacError, match="not a DICOM file"):
        load_cine(path)


def test_dicom_without_pixel_data(tmp_path):
    # a non-image object (a presentation state) given instead of the cine
    ds = make_presentation_state()
    with pytest.raises(CacError, match="is a DICOM file without pixel data .*Presentation State"):
        load_cine(save(ds, tmp_path / "nopix.dcm"))
    # an XA image whose pixel data was stripped
    ds = make_xa(ramp_frames(n=2))
    del ds.PixelData
    with pytest.raises(CacError, match=r"X-Ray Angiographic Image Storage\) without its pixel data"):
        load_cine(save(ds, tmp_path / "stripped.dcm"))


def test_single_frame(tmp_path):
    path = save(make_xa(ramp_frames(n=1)[0]), tmp_path / "one.dcm")
    with pytest.raises(CacError, match="single frame; a cine needs at least 2 frames"):
        load_cine(path)
    from PIL import Image

    image = tmp_path / "one.png"
    Image.fromarray(ramp_frames(n=1, dtype=np.uint8, maximum=255)[0]).save(image)
    with pytest.raises(CacError, match="at least 2 frames"):
        load_cine(image)


def test_non_xa_modality_warns_and_goes_on(tmp_path):
    frames = ramp_frames(n=3)
    path = save(make_xa(frames, sop_class="1.2.840.10008.5.1.4.1.1.7", modality="OT"), tmp_path / "ot.dcm")
    with pytest.warns(CacWarning, match="modality OT, not XA"):
        cine = load_cine(path)
    assert np.array_equal(cine.frames, frames) and cine.modality == "OT"


def test_undecodable_transfer_syntax(tmp_path):
    from pydicom.encaps import encapsulate

    ds = make_xa(ramp_frames(n=2, dtype=np.uint8, maximum=255))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "mpeg.dcm")
    with pytest.raises(CacError, match=r"MPEG2 .*\(1\.2\.840\.10008\.1\.2\.4\.100\) cannot be decoded"):
        load_cine(path)


@pytest.mark.skipif(not PYDICOM3, reason="pydicom 3's decoder registry; pydicom 2 in the next test")
def test_decoder_problem_names_the_package(monkeypatch):
    """When the plugin is missing the message names the syntax and the package pydicom asks for."""
    import pydicom.pixels

    assert dicom_io.decoder_problem("1.2.840.10008.1.2.4.70") is None
    assert dicom_io.decoder_problem(RLELossless) is None
    real = pydicom.pixels.get_decoder

    class NoPlugins:  # the state of a JPEG 2000 decoder without pylibjpeg-openjpeg, gdcm or Pillow's openjpeg
        def __init__(self, decoder):
            self.available_plugins = ()
            self.missing_dependencies = real(decoder).missing_dependencies

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugins(uid))
    message = dicom_io.decoder_problem("1.2.840.10008.1.2.4.90")
    assert "JPEG 2000" in message and "pylibjpeg-openjpeg" in message
    message = dicom_io.decoder_problem("1.2.840.10008.1.2.4.80")
    # pydicom names only the plugins not installed (pyjpegls comes with highdicom): either is a package name.
    assert "JPEG-LS" in message and ("pyjpegls" in message or "gdcm" in message)


def test_decoder_problem_with_pydicom2_handlers(monkeypatch):
    """pydicom 2's handler list (what Slicer bundles) gives the same answers and messages."""
    pydicom_config = pytest.importorskip("pydicom.config")
    if PYDICOM3:
        pytest.skip("pydicom 3 has no pixel data handlers")
    assert dicom_io.decoder_problem("1.2.840.10008.1.2.4.70") is None
    assert dicom_io.decoder_problem(RLELossless) is None
    assert dicom_io.decoder_problem(ExplicitVRLittleEndian) is None
    assert "cannot be decoded: pydicom has no decoder" in dicom_io.decoder_problem("1.2.840.10008.1.2.4.100")
    for handler in pydicom_config.pixel_data_handlers:
        monkeypatch.setattr(handler, "is_available", lambda: False)
    message = dicom_io.decoder_problem("1.2.840.10008.1.2.4.90")
    assert "JPEG 2000" in message and "install one of" in message


@needs_data
def test_truncated_compressed_file(tmp_path):
    data = BIPLANE.read_bytes()
    path = tmp_path / "half.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacError, match="is truncated"):
        load_cine(path)


def test_truncated_uncompressed_file(tmp_path):
    path = save(make_xa(ramp_frames(n=4), FrameTime=33), tmp_path / "full.dcm")
    data = path.read_bytes()
    for name, size in (("cut.dcm", len(data) - 3000), ("head.dcm", 400)):
        cut = tmp_path / name
        cut.write_bytes(data[:size])
        with pytest.raises(CacError, match="is truncated|its pixels were stripped"):
            load_cine(cut)


def test_bad_user_values(tmp_path):
    path = save(make_xa(ramp_frames(n=2)), tmp_path / "x.dcm")
    with pytest.raises(CacError, match="spacing"):
        load_cine(path, spacing_mm=-1)
    with pytest.raises(CacError, match="frame time"):
        load_cine(path, frame_time_ms=0)


def test_no_spacing_no_frame_time(tmp_path):
    path = save(make_xa(ramp_frames(n=3)), tmp_path / "bare.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the facts are simply unknown
        cine = load_cine(path)
    assert cine.spacing_mm is None and cine.spacing_source == "unknown" and cine.frame_time_ms is None
    assert cine.r_wave_frames is None and not cine.ecg_present
    cine = load_cine(path, spacing_mm=(0.2, 0.25), frame_time_ms=40)
    assert cine.spacing_mm == (0.2, 0.25) and cine.spacing_source == "user" and cine.frame_time_ms == 40


@needs_data
def test_dicom_folder_holding_one_multiframe_file(tmp_path):
    shutil.copy(GE, tmp_path / "cine.dcm")
    cine = load_cine(tmp_path)
    assert cine.n_frames == 16 and cine.frame_time_ms == pytest.approx(66.6667)


@needs_data
def test_ecg_curve_needs_a_frame_time(tmp_path):
    ds = pydicom.dcmread(BIPLANE)
    del ds.FrameTime
    path = save(ds, tmp_path / "no-frame-time.dcm")
    with pytest.warns(CacWarning, match="ECG curve but no frame time"):
        cine = load_cine(path)
    assert cine.frame_time_ms is None and cine.ecg is None
    assert cine.ecg_present and cine.r_wave_frames == [0, 11]  # the R waves are still known
    cine = load_cine(path, frame_time_ms=66.0)  # the user's frame time brings the curve back
    assert cine.ecg is not None and cine.ecg.times_ms[80] == pytest.approx(66.0)


def test_ecg_curve_with_time_axis_in_seconds(tmp_path):
    """A curve whose x axis is in SEC (start/step, not stored) gives its own sample times."""
    ds = make_xa(ramp_frames(n=3, dtype=np.uint8, maximum=250), FrameTime=100)
    values = np.array([5, -3, 120, 7, 0, -8], dtype=np.int16)
    ds.add_new((0x5000, 0x0005), "US", 2)  # CurveDimensions
    ds.add_new((0x5000, 0x0010), "US", values.size)  # NumberOfPoints
    ds.add_new((0x5000, 0x0020), "CS", "ECG")  # TypeOfData
    ds.add_new((0x5000, 0x0030), "SH", ["SEC", "MV"])  # AxisUnits
    ds.add_new((0x5000, 0x0103), "US", 1)  # DataValueRepresentation: signed short
    ds.add_new((0x5000, 0x0110), "US", [0, 1])  # x from start/step, y stored
    ds.add_new((0x5000, 0x0112), "US", 1)  # CoordinateStartValue
    ds.add_new((0x5000, 0x0114), "US", 2)  # CoordinateStepValue
    ds.add_new((0x5000, 0x3000), "OW", values.tobytes())
    cine = load_cine(save(ds, tmp_path / "curve.dcm"))
    assert cine.ecg.source == "curve-5000"
    assert np.array_equal(cine.ecg.samples, values)
    assert np.allclose(cine.ecg.times_ms, (1 + 2 * np.arange(values.size)) * 1000.0)


def test_dicom_without_preamble_or_file_meta(tmp_path):
    """Old files start with the data set itself (no preamble, no file meta): read as implicit VR."""
    frames = ramp_frames(n=3)
    ds = make_xa(frames, FrameTime=40)
    del ds.file_meta
    path = tmp_path / "IMG0001"
    save_bare(ds, path)
    assert path.read_bytes()[128:132] != b"DICM"
    cine = load_cine(path)
    assert np.array_equal(cine.frames, frames) and cine.frame_time_ms == 40.0
    assert cine.transfer_syntax == "1.2.840.10008.1.2"
    # a folder of such files, named without extension
    folder = tmp_path / "series"
    folder.mkdir()
    series = generate_uid()
    for k in range(3):
        item = make_xa(frames[k], FrameTime=40)
        del item.file_meta
        item.SeriesInstanceUID, item.InstanceNumber = series, k + 1
        save_bare(item, folder / f"IMG{k + 1:04d}")
    assert np.array_equal(load_cine(folder).frames, frames)
