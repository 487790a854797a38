"""Synthetic coronary angiography cines with calcium ground truth (the phantom).

No public 2D angiography data set labels coronary calcification, so training,
tests, benchmarks and the demo use this phantom.  The model of each aspect, the
parameters and their defaults are described in ``docs/phantom.md``.

Public API
----------
- :class:`PhantomParams`: every realism aspect as a parameter with a documented default.
- :func:`generate_acquisition` ``(params, seed, patient=0, acquisition=0) -> Acquisition``:
  one cine in memory (frames, calcium truth masks, three annotators, majority, truth dict).
- On disk, in :mod:`.phantom_writer`: :func:`~.phantom_writer.write_dataset` (DICOM XA cines,
  ``.seg.nrrd`` annotations, ``truth.json``, ``manifest.json``),
  :func:`~.phantom_writer.load_manifest` ``(dataset_dir) -> list[dict]`` with absolute paths,
  :func:`~.phantom_writer.write_dicom` ``(path, acq)``: only the DICOM cine of an acquisition.

Determinism: every random draw comes from numpy Generators seeded with
``(seed, patient)`` (anatomy: coronary tree and calcium in 3D, shared by all
acquisitions of a patient) and ``(seed, patient, acquisition)`` (view, heart
rate, contrast timing, noise...).  The same arguments give identical arrays.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from . import phantom_anatomy as anat
from . import phantom_imaging as img

# Streams of the random generators (a third seed word), so adding draws to one
# aspect does not change the others.
_PATIENT, _VIEW, _DYNAMICS, _BACKGROUND, _NOISE, _ANNOTATORS, _METAL = range(7)
# A pixel is in the metal footprint (truth) above this line integral: the faint end of calcium
# (``faint_attenuation`` 0.07), so the footprint holds all the metal a reader could see.
METAL_FOOTPRINT_MIN = 0.07

# What PhantomParams.validate accepts: field -> (name in messages: the `cac phantom` option where there is one,
# lowest, highest, unit).  Wide around realistic values; the reasons are in the docstring of validate.
PARAM_LIMITS = {
    "rows": ("--size", 32, 4096, " px"), "cols": ("--size", 32, 4096, " px"),
    "n_frames": ("--frames", 8, 5000, " frames"), "fps": ("--fps", 0.5, 120, " fps"),
    "spacing_mm_range": ("spacing_mm_range", 0.05, 2.0, " mm"),
    "sid_mm_range": ("sid_mm_range", 300, 3000, " mm"), "sod_mm_range": ("sod_mm_range", 200, 2500, " mm"),
    "view_jitter_deg": ("view_jitter_deg", 0, 45, " degrees"),
    "heart_rate_bpm_range": ("--heart-rate", 20, 250, " bpm"), "rr_jitter": ("rr_jitter", 0, 0.3, ""),
    "systole_fraction": ("systole_fraction", 0.1, 0.9, " of the cycle"),
    "contraction": ("contraction", 0, 0.5, ""), "longitudinal": ("longitudinal", 0, 0.5, ""),
    "twist_deg": ("twist_deg", 0, 45, " degrees"),
    "respiration_hz_range": ("respiration_hz_range", 0, 1, " Hz"),
    "respiration_mm_range": ("--respiration-mm", 0, 30, " mm"),
    "table_pan_prob": ("--table-pan-prob", 0, 1, ""), "table_pan_mm_range": ("table_pan_mm_range", 0, 50, " mm"),
    "onset_fraction_range": ("--onset-range", 0.01, 0.99, " of the run"),
    "early_onset_prob": ("--early-onset-prob", 0, 1, ""),
    "early_onset_fraction_range": ("early_onset_fraction_range", 0.01, 0.99, " of the run"),
    "wash_in_s_range": ("wash_in_s_range", 0.05, 10, " s"),
    "contrast_mu_per_mm": ("--contrast", 0, 1, " /mm"), "contrast_spread": ("contrast_spread", 0, 3, ""),
    "blood_mu_per_mm": ("blood_mu_per_mm", 0, 0.1, " /mm"),
    "vessel_diameter_mm_range": ("vessel_diameter_mm_range", 0.5, 8, " mm"), "tortuosity": ("tortuosity", 0, 5, ""),
    "left_prob": ("left_prob", 0, 1, ""), "heart_mu_per_mm": ("heart_mu_per_mm", 0, 0.1, " /mm"),
    "spine_mu": ("spine_mu", 0, 10, ""), "rib_mu_per_mm": ("rib_mu_per_mm", 0, 0.5, " /mm"),
    "diaphragm_mu": ("diaphragm_mu", 0, 10, ""), "lung_texture": ("lung_texture", 0, 1, ""),
    "lung_markings": ("lung_markings", 0, 1000, ""),
    "lung_markings_mu_per_mm": ("lung_markings_mu_per_mm", 0, 0.5, " /mm"),
    "catheter_mu_per_mm": ("catheter_mu_per_mm", 0, 2, " /mm"), "reflux": ("reflux", 0, 5, ""),
    "calcium_count_range": ("--calcium-count", 0, 20, ""),
    "calcium_free_fraction": ("--calcium-free-fraction", 0, 1, ""),
    "calcium_size_mm_range": ("calcium_size_mm_range", 0.1, 20, " mm"),
    "calcium_mu_per_mm": ("--calcium-contrast", 0, 2, " /mm"),
    "calcium_small_prob": ("calcium_small_prob", 0, 1, ""), "calcium_mu_spread": ("calcium_mu_spread", 0, 3, ""),
    "photons": ("--photons", 1, 1e7, " quanta per pixel"), "blur_px": ("blur_px", 0, 10, " px"),
    "exposure_drift": ("exposure_drift", 0, 0.5, ""), "vignetting": ("vignetting", 0, 2, ""),
    "collimator_prob": ("collimator_prob", 0, 1, ""), "metal_prob": ("metal_prob", 0, 1, ""),
    "display_gamma_range": ("display_gamma_range", 0.1, 10, ""),
    "display_processing_prob": ("--display-processing", 0, 1, ""),
    "annotator_bias_px_range": ("annotator_bias_px_range", -5, 5, " px"),
    "annotator_jitter_px": ("annotator_jitter_px", 0, 5, " px"), "faint_attenuation": ("faint_attenuation", 0, 1, ""),
    "annotator_miss_faint_prob": ("annotator_miss_faint_prob", 0, 1, ""),
    "annotator_min_snr": ("--annotator-min-snr", 0, 100, " (about 5 = just visible; 0 = off)"),
    "annotator_spurious_prob": ("annotator_spurious_prob", 0, 1, ""),
}
_RANGE_PARAMS = {k for k in PARAM_LIMITS if k.endswith(("_range", "_spread"))}
_INTEGER_PARAMS = {"rows", "cols", "n_frames", "lung_markings", "calcium_count_range"}
# Frame pixels of one cine (frames x rows x cols): the frames and their calcium, metal and annotator masks
# are built in memory at about 8 bytes a pixel, so this is about 8 GiB (e.g. 1000 frames of 1024 x 1024).
MAX_CINE_PIXELS = 2**30


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


@dataclass
class PhantomParams:
    """Parameters of the phantom (ranges are sampled uniformly per acquisition unless noted).

    Geometry and acquisition
      rows, cols: image size (512).  Smaller sizes keep the same field of view
        (the spacing is scaled by 512/size), for fast tests.
      n_frames: frames per cine (200).  fps: frame rate (15; 7.5 and 30 also usual).
      bits: BitsStored of the output, 8 (uint8), 10 or 12 (uint16).
      spacing_mm_range: pixel spacing at the isocentre for a 512 matrix (0.20-0.39 mm, the paper).
      sid_mm_range, sod_mm_range: source-detector and source-isocentre distances.
      view_jitter_deg: random deviation from the standard views.
    Cardiac motion
      heart_rate_bpm_range (50-120), rr_jitter (relative SD of RR between beats, 0.03),
      systole_fraction (end-systole at 0.35 of the cycle: fast systole, slow diastole),
      contraction (radial shortening at end-systole, 0.15), longitudinal (0.12), twist_deg (8):
        the base and proximal vessels move 10-20 mm over a cycle, as coronaries do.
    Respiration and table
      respiration_hz_range (0.2-0.3), respiration_mm_range (2-5 mm, cranio-caudal),
      table_pan_prob (0.2), table_pan_mm_range (5-15 mm over 1-3 s).
    Contrast
      onset_fraction_range (0.35-0.65 of the run), early_onset_prob (0.15) with
      early_onset_fraction_range (0.1-0.35); wash_in_s_range (0.5-1.5 s);
      contrast_mu_per_mm (iodinated blood, 0.17 /mm at full concentration, times
      contrast_spread per acquisition); blood_mu_per_mm (0.002: vessels nearly invisible without contrast).
    Anatomy
      vessel_diameter_mm_range (3-4 mm proximal main vessel, tapering to about 1.6-2 mm),
      tortuosity (1.0 = default wiggle), left_prob (0.7: left coronary system injected),
      heart_mu_per_mm (0.009: heart vs. lung), spine_mu (1.3), rib_mu_per_mm (0.02),
      diaphragm_mu (1.2), lung_texture (0.07: SD of the 1/f texture),
      lung_markings (60 thin pulmonary vessels, 0.03 /mm: lung_markings_mu_per_mm), catheter (True), catheter_mu_per_mm (0.25),
      reflux (0.4: peak attenuation of the contrast puff in the aortic root at the injection).
    Calcium
      calcium_count_range (1-4 deposits per calcified patient), calcium_free_fraction
      (0.25 of patients without calcium: negatives), calcium_size_mm_range (0.5-5 mm: length along the
      vessel, log-uniform in 1.2-5 mm, or in 0.5-1.2 mm for a fraction calcium_small_prob = 0.2 of
      small deposits; width 0.45-1 x length), calcium_mu_per_mm (0.12 /mm: a 1 mm thick deposit
      attenuates about 12 % more than its surroundings) times calcium_mu_spread (0.7-1.3).
    Detector
      photons (quanta per pixel at the lung level, 1200: sets the quantum noise),
      blur_px (0.7: Gaussian detector blur), exposure_drift (0.01 relative), vignetting (0.2),
      collimator_prob (0.5: collimator blades and a rounded shutter at the field edges).
      display ("log": stored values are the log of the detected counts, as most XA systems store
        them; "gamma": that log image re-mapped by a power law with an exponent drawn from
        display_gamma_range, as post-processed runs look).
      display_processing_prob (0.0): probability per acquisition of XA display processing,
        harmonization (a large unsharp mask, 8-48 px, gain 0-2) and edge enhancement (a small one,
        0.7-3 px, gain 0-1.5; kernels given for 512 px, scaled with the frame size), which real
        systems apply before storing a run (:func:`.phantom_imaging.xa_unsharp`).
    Dense metal that is not calcium (domain randomisation; :mod:`.phantom_domain`)
      metal_prob (0.0): probability per acquisition of sternal wires (loops over the sternum, moving
        with respiration), surgical clips (short dense bars beside the vessels, moving with the
        heart) and, half the time, a stent (a strut mesh on a main vessel segment).
      calcium_shape_probs ((1, 0, 0)): probabilities of spotty, tram-track and arc deposits.
    Annotators
      annotator_bias_px_range (-0.6..1.0 px: each annotator's tendency to draw larger or smaller),
      annotator_jitter_px (0.6 px smooth boundary noise, new for every frame),
      faint_attenuation (0.07: deposits whose peak extra attenuation is below are faint),
      annotator_miss_faint_prob (0.35 per annotator and faint deposit),
      annotator_min_snr (0: off; else annotators draw only deposits whose Rose detectability in the
        rendered non-contrast frames reaches this, times 0.8-1.25 per annotator),
      annotator_spurious_prob (0.15 per annotator and acquisition: a small spurious blob).
    Output
      ecg (False): write the R Wave Pointer in the DICOM (the paper's data have no ECG).
    """

    rows: int = 512
    cols: int = 512
    n_frames: int = 200
    fps: float = 15.0
    bits: int = 8
    spacing_mm_range: tuple[float, float] = (0.20, 0.39)
    sid_mm_range: tuple[float, float] = (950.0, 1200.0)
    sod_mm_range: tuple[float, float] = (700.0, 800.0)
    view_jitter_deg: float = 6.0
    heart_rate_bpm_range: tuple[float, float] = (50.0, 120.0)
    rr_jitter: float = 0.03
    systole_fraction: float = 0.35
    contraction: float = 0.15
    longitudinal: float = 0.12
    twist_deg: float = 8.0
    respiration_hz_range: tuple[float, float] = (0.2, 0.3)
    respiration_mm_range: tuple[float, float] = (2.0, 5.0)
    table_pan_prob: float = 0.2
    table_pan_mm_range: tuple[float, float] = (5.0, 15.0)
    onset_fraction_range: tuple[float, float] = (0.35, 0.65)
    early_onset_prob: float = 0.15
    early_onset_fraction_range: tuple[float, float] = (0.1, 0.35)
    wash_in_s_range: tuple[float, float] = (0.5, 1.5)
    contrast_mu_per_mm: float = 0.17
    contrast_spread: tuple[float, float] = (0.75, 1.2)
    blood_mu_per_mm: float = 0.002
    vessel_diameter_mm_range: tuple[float, float] = (3.0, 4.0)
    tortuosity: float = 1.0
    left_prob: float = 0.7
    heart_mu_per_mm: float = 0.009
    spine_mu: float = 1.3
    rib_mu_per_mm: float = 0.02
    diaphragm_mu: float = 1.2
    lung_texture: float = 0.07
    lung_markings: int = 60
    lung_markings_mu_per_mm: float = 0.03
    catheter: bool = True
    catheter_mu_per_mm: float = 0.25
    reflux: float = 0.4
    calcium_count_range: tuple[int, int] = (1, 4)
    calcium_free_fraction: float = 0.25
    calcium_size_mm_range: tuple[float, float] = (0.5, 5.0)
    calcium_mu_per_mm: float = 0.12
    calcium_small_prob: float = 0.2
    calcium_mu_spread: tuple[float, float] = (0.7, 1.3)
    calcium_shape_probs: tuple[float, float, float] = (1.0, 0.0, 0.0)
    photons: float = 1200.0
    blur_px: float = 0.7
    exposure_drift: float = 0.01
    vignetting: float = 0.2
    collimator_prob: float = 0.5
    metal_prob: float = 0.0
    display: str = "log"
    display_gamma_range: tuple[float, float] = (0.6, 1.6)
    display_processing_prob: float = 0.0
    annotator_bias_px_range: tuple[float, float] = (-0.6, 1.0)
    annotator_jitter_px: float = 0.6
    faint_attenuation: float = 0.07
    annotator_miss_faint_prob: float = 0.35
    annotator_min_snr: float = 0.0
    annotator_spurious_prob: float = 0.15
    ecg: bool = False

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def validate(self) -> None:
        """Refuse parameters the phantom cannot render, with one line naming the setting.

        Every number must be finite and within the limits of :data:`PARAM_LIMITS` (a setting of
        ``cac phantom`` is named by its option, the others by their field).  The limits are wide
        around the realistic values and keep a cine renderable: at most :data:`MAX_CINE_PIXELS`
        frame pixels (the cine and its masks are built in memory, about 8 bytes a pixel), a
        respiratory and pan excursion of a few cm (the static layers carry a margin that wide) and an
        RR jitter below 0.3 (a beat must stay longer than zero).

        Raises
        ------
        CacError
            When a parameter is not a finite number in its range, or a range is reversed.
        """
        from CACIdentifierLib.errors import CacError

        for name, (label, lo, hi, unit) in PARAM_LIMITS.items():
            value = getattr(self, name)
            is_range = name in _RANGE_PARAMS
            values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            shown = " ".join(str(v) if isinstance(v, numbers.Integral) else f"{v:g}" if _is_real(v) else repr(v)
                             for v in values)
            whole = name in _INTEGER_PARAMS
            # `lo <= v <= hi` is False for NaN, so a NaN is refused with the out-of-range values.
            if (isinstance(value, (tuple, list)) != is_range or len(values) != (2 if is_range else 1)
                    or not all(_is_real(v) and lo <= v <= hi and (not whole or v == int(v)) for v in values)):
                fraction = whole and any(_is_real(v) and math.isfinite(v) and v != int(v) for v in values)
                what = (("whole numbers " if fraction else "") + "MIN MAX within " if is_range
                        else "a whole number within " if fraction else "")
                raise CacError(f"{label} must be {what}{lo:g}-{hi:g}{unit}, not {shown}")
            if is_range and values[0] > values[1]:
                raise CacError(f"{label} {shown} is reversed; give MIN then MAX")
        pixels = self.n_frames * self.rows * self.cols
        if pixels > MAX_CINE_PIXELS:
            raise CacError(f"--frames {self.n_frames} at --size {self.rows}x{self.cols} is {pixels:.3g} pixels, more "
                           f"than the {MAX_CINE_PIXELS:.3g} a cine may have (it is built in memory, about 8 bytes a "
                           "pixel); use fewer frames or a smaller size")
        if self.sod_mm_range[1] >= self.sid_mm_range[0]:
            raise CacError("sod_mm_range must end below sid_mm_range: the isocentre lies between source and detector")
        if self.bits not in (8, 10, 12, 16):
            raise CacError(f"--bits {self.bits} not supported; use 8, 10, 12 or 16")
        if self.display not in ("log", "gamma"):
            raise CacError(f"display {self.display!r} not supported; use log or gamma")
        for name in ("catheter", "ecg"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise CacError(f"{name} must be True or False, not {getattr(self, name)!r}")
        shape = self.calcium_shape_probs
        if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                or not all(_is_real(v) and math.isfinite(v) and 0 <= v <= 1 for v in shape) or sum(shape) <= 0):
            raise CacError("calcium_shape_probs must be three probabilities in [0, 1], not all zero")


@dataclass
class Acquisition:
    """One phantom cine in memory.

    frames: (N, rows, cols) uint8 (bits 8) or uint16, MONOCHROME2 (attenuation is dark).
    calcium: (N, rows, cols) bool, the projected footprint of every deposit in every frame (truth).
    metal: (N, rows, cols) bool, the footprint of dense metal that is not calcium (sternal wires, clips,
      stents: a line integral above ``METAL_FOOTPRINT_MIN``); None when the acquisition has none.
    annotators: three (N, rows, cols) bool masks, drawn on the non-contrast frames only.
    majority: (N, rows, cols) bool, at least two of the three annotators.
    truth: JSON-serialisable dict (phase, onset, heart rate per beat, deposits per frame, spacing...).
    centerlines: (N, M, 2) float32 (row, col) of the coronary centreline samples per frame;
      centerline_radius_mm (M,) and centerline_vessel (M,) their radius and vessel name index.
    """

    frames: np.ndarray
    calcium: np.ndarray
    annotators: list[np.ndarray]
    majority: np.ndarray
    truth: dict
    spacing_mm: tuple[float, float]
    frame_time_ms: float
    bits: int
    view: dict = field(default_factory=dict)
    metal: np.ndarray | None = None
    centerlines: np.ndarray | None = None
    centerline_radius_mm: np.ndarray | None = None
    centerline_vessel: np.ndarray | None = None

    @property
    def onset_frame(self) -> int:
        return int(self.truth["onset_frame"])

    @property
    def phase(self) -> np.ndarray:
        return np.asarray(self.truth["phase"], dtype=float)

    def to_cine(self):
        """The frames as a :class:`CACIdentifierLib.cine.Cine` (what the DICOM reads back as; the R
        waves only when ``params.ecg`` was set, as in the file)."""
        from CACIdentifierLib.cine import Cine

        t = self.truth
        r_waves = [int(round(f)) for f in t["r_wave_frames"]] if t["params"].get("ecg") else None
        return Cine(frames=self.frames, frame_time_ms=self.frame_time_ms, spacing_mm=tuple(self.spacing_mm),
                    spacing_source="phantom", bits_stored=self.bits, r_wave_frames=r_waves, modality="XA",
                    identifiers={"PatientID": f"PHANTOM-{t['seed']}-P{t['patient'] + 1:03d}",
                                 "acquisition": f"P{t['patient'] + 1:03d}_A{t['acquisition'] + 1:02d}"},
                    source="phantom")


def _rng(seed: int, patient: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9E3779B9, int(patient), *[int(m) for m in more]])


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def make_patient(params: PhantomParams, seed: int, patient: int, calcium_free: bool | None = None):
    """The 3D anatomy of a patient (shared by all its acquisitions)."""
    rng = _rng(seed, patient, _PATIENT)
    side = "left" if rng.random() < params.left_prob else "right"
    free_draw = rng.random() < params.calcium_free_fraction
    lo, hi = params.calcium_count_range
    n_dep = int(rng.integers(lo, hi + 1))
    if calcium_free is None:
        calcium_free = free_draw
    if calcium_free:
        n_dep = 0
    return anat.make_patient(rng, patient, side, n_dep, params)


def _timeline(params: PhantomParams, rng: np.random.Generator):
    """Beats, phase, contrast timing, respiration and pan over the run."""
    n = params.n_frames
    dt = 1.0 / params.fps
    t = np.arange(n) * dt
    hr = rng.uniform(*params.heart_rate_bpm_range)
    rr_mean = 60.0 / hr
    r_times = [-rng.uniform(0, rr_mean)]
    rrs = []
    while r_times[-1] <= t[-1] + dt:
        rr = rr_mean * (1.0 + params.rr_jitter * float(np.clip(rng.standard_normal(), -2.5, 2.5)))
        rrs.append(rr)
        r_times.append(r_times[-1] + rr)
    r_times = np.array(r_times)
    k = np.searchsorted(r_times, t, side="right") - 1
    phase = (t - r_times[k]) / (r_times[k + 1] - r_times[k])
    phase = np.clip(phase, 0.0, np.nextafter(1.0, 0.0))

    if rng.random() < params.early_onset_prob:
        frac = rng.uniform(*params.early_onset_fraction_range)
    else:
        frac = rng.uniform(*params.onset_fraction_range)
    onset = int(np.clip(round(frac * n), 2, n - 2))
    # Contrast starts between the previous frame and this one, so `onset` is the first frame with any.
    t0 = (onset - 1 + rng.uniform(0.2, 0.6)) * dt
    wash = rng.uniform(*params.wash_in_s_range)

    resp_f = rng.uniform(*params.respiration_hz_range)
    resp_a = rng.uniform(*params.respiration_mm_range)
    resp_p = rng.uniform(0, 2 * np.pi)
    resp_dir = anat._unit([0.0, -0.25, 1.0])
    resp = (resp_a * np.sin(2 * np.pi * resp_f * t + resp_p))[:, None] * resp_dir

    pan = np.zeros((n, 3))
    pan_info = None
    if rng.random() < params.table_pan_prob:
        start = rng.uniform(0, 0.6) * t[-1]
        dur = rng.uniform(1.0, 3.0)
        mag = rng.uniform(*params.table_pan_mm_range)
        ang = rng.uniform(0, 2 * np.pi)
        vec = mag * np.array([np.cos(ang), 0.0, np.sin(ang)])  # table plane: x (left-right), z (head-feet)
        pan = _smoothstep((t - start) / dur)[:, None] * vec
        pan_info = {"start_s": start, "duration_s": dur, "vector_mm": vec.tolist()}
    exposure = 1.0 + params.exposure_drift * (
        np.sin(2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 6.3)) * 0.7
        + np.sin(2 * np.pi * t / rng.uniform(2, 5) + rng.uniform(0, 6.3)) * 0.3
    )
    return {
        "t": t, "dt": dt, "hr": hr, "r_times": r_times, "rrs": np.diff(r_times), "phase": phase,
        "onset": onset, "t0": t0, "wash": wash, "resp": resp, "pan": pan, "pan_info": pan_info,
        "resp_f": resp_f, "resp_a": resp_a, "exposure": exposure,
    }


def _make_view(params: PhantomParams, patient, rng) -> anat.View:
    views = anat.LEFT_VIEWS if patient.side == "left" else anat.RIGHT_VIEWS
    prim, sec = views[int(rng.integers(len(views)))]
    prim = float(np.round(prim + rng.uniform(-1, 1) * params.view_jitter_deg, 1))
    sec = float(np.round(sec + rng.uniform(-1, 1) * params.view_jitter_deg, 1))
    sod = float(np.round(rng.uniform(*params.sod_mm_range)))
    sid = float(np.round(rng.uniform(*params.sid_mm_range)))
    mag = sid / sod
    iso = rng.uniform(*params.spacing_mm_range) * 512.0 / params.rows
    # Imager pixel spacing is what a detector stores; keep 6 digits and derive the isocentre
    # spacing from the rounded tags, exactly as a reader will.
    imager = float(f"{iso * mag:.6g}")
    mag = float(f"{mag:.6g}")
    spacing = imager / mag
    # Operators centre the field on the injected tree.
    pts = np.concatenate([v.points for v in patient.vessels if v.main])
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0)) + rng.normal(0, 6, 3)
    view = anat.View(prim, sec, sod, sid, spacing, params.rows, params.cols, centre)
    view.imager_spacing_mm = imager
    view.magnification = mag
    return view


def generate_acquisition(params: PhantomParams | None = None, seed: int = 0, patient: int = 0,
                         acquisition: int = 0, *, calcium_free: bool | None = None,
                         progress=None) -> Acquisition:
    """Generate one cine with its calcium truth and annotations, in memory.

    ``seed`` with ``patient`` fixes the anatomy (tree and calcium in 3D), with
    ``acquisition`` also the view and the dynamics.  ``calcium_free`` forces a
    patient without calcium (True) or with it (False); None draws it with
    ``params.calcium_free_fraction``.  ``progress(done, total, message)`` is
    called per frame.
    """
    params = params or PhantomParams()
    params.validate()
    pat = make_patient(params, seed, patient, calcium_free)
    rng_view = _rng(seed, patient, acquisition, _VIEW)
    view = _make_view(params, pat, rng_view)
    tl = _timeline(params, _rng(seed, patient, acquisition, _DYNAMICS))
    rng_bg = _rng(seed, patient, acquisition, _BACKGROUND)
    rng_noise = _rng(seed, patient, acquisition, _NOISE)
    renderer = _Renderer(params, pat, view, tl, rng_bg)
    if params.metal_prob > 0 or params.display != "log" or params.display_processing_prob > 0:
        # Own stream: adding metal, a display curve or display processing leaves every other draw as it was.
        from .phantom_metal import add_metal_and_display

        add_metal_and_display(renderer, _rng(seed, patient, acquisition, _METAL))
    n = params.n_frames
    frames = np.empty((n, params.rows, params.cols), np.uint8 if params.bits == 8 else np.uint16)
    calcium = np.zeros((n, params.rows, params.cols), bool)
    metal = np.zeros((n, params.rows, params.cols), bool) if renderer.has_metal else None
    for k in range(n):
        frames[k] = renderer.frame(k, rng_noise, calcium[k], None if metal is None else metal[k])
        if progress is not None:
            progress(k + 1, n, "rendering frames")
    truth = renderer.truth(seed, patient, acquisition)
    from .phantom_annotators import annotate

    annotators, majority, notes = annotate(params, renderer, calcium, _rng(seed, patient, acquisition,
                                                                           _ANNOTATORS), frames)
    truth["annotators"] = notes
    for rec, dep in zip(truth["calcifications"], pat.deposits):
        if hasattr(dep, "detectability"):
            rec["detectability"] = dep.detectability
    return Acquisition(
        frames=frames, calcium=calcium, metal=metal, annotators=annotators, majority=majority, truth=truth,
        spacing_mm=(view.spacing_mm, view.spacing_mm), frame_time_ms=1000.0 / params.fps, bits=params.bits,
        view=truth["view"], centerlines=renderer.centerlines, centerline_radius_mm=renderer.vessel_radius,
        centerline_vessel=renderer.vessel_index,
    )


class _Renderer:
    """Static layers built once; :meth:`frame` renders frame k."""

    def __init__(self, params: PhantomParams, pat, view: anat.View, tl: dict, rng):
        self.p, self.pat, self.view, self.tl = params, pat, view, tl
        # Layers that phantom_metal.add_metal_and_display may add: none by default.
        self.metal_wires = None  # sternal wires (an attenuation canvas), or None
        self.metal_heart = []  # (points, radius_mm, weight) of clips and stents moving with the heart
        self.metal_info = None
        self.display_gamma = None  # None: the log display
        self.display_processing = None  # (sigma_L, gain_L, sigma_S, gain_S) of xa_unsharp, or None: none
        rows, cols, sp = params.rows, params.cols, view.spacing_mm
        self.contrast_mu = params.contrast_mu_per_mm * rng.uniform(*params.contrast_spread)
        self.white = rng.uniform(200, 235)
        self.gain = rng.uniform(68, 86)
        base = rng.uniform(0.1, 0.4)  # soft tissue in front of and behind the lungs
        scale_bits = (2**params.bits - 1) / 255.0
        self.white *= scale_bits
        self.gain *= scale_bits
        self.max_value = 2**params.bits - 1

        # Vessels: one flat array of sphere samples.
        vs = pat.vessels
        self.vessel_names = [v.name for v in vs]
        self.vessel_points = np.concatenate([v.points for v in vs])
        self.vessel_radius = np.concatenate([v.radius for v in vs]).astype(np.float32)
        self.vessel_step = np.concatenate([v.step for v in vs])
        self.vessel_arc = np.concatenate([v.arclength for v in vs])
        self.vessel_index = np.concatenate([np.full(len(v.points), i, np.int16) for i, v in enumerate(vs)])
        self.centerlines = np.zeros((params.n_frames, len(self.vessel_points), 2), np.float32)
        self.arc_frac = self.vessel_arc / max(pat.tree_length_mm, 1.0)

        cath = pat.catheter
        self.cath_points = cath
        # Reflux cloud: in the aortic root, 6-10 mm back from the ostium along the catheter.
        self.reflux_centre = cath[min(len(cath) - 1, int(rng.uniform(20, 35)))] + rng.normal(0, 2, 3)
        self.reflux_radius_mm = rng.uniform(6, 10)
        cath_arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(cath, axis=0), axis=1))])
        self.cath_weight = np.exp(-cath_arc / 40.0)
        self.cath_step = np.concatenate([[0.3], np.diff(cath_arc)])

        # Static layers on canvases with a margin for respiration and pan.
        max_shift = params.table_pan_mm_range[1] + 1.5 * params.respiration_mm_range[1] + 4.0
        self.margin = m = int(math.ceil(max_shift / sp)) + 2
        H, W = rows + 2 * m, cols + 2 * m
        Y, X = np.mgrid[0:H, 0:W].astype(np.float32)
        X = (X - m) * sp
        Y = (Y - m) * sp
        r_top, c_top, _ = view.project(np.array([0.0, pat.spine_y_mm, 150.0]))
        r_bot, c_bot, _ = view.project(np.array([0.0, pat.spine_y_mm, -150.0]))
        dxdy = (c_top - c_bot) / (r_top - r_bot)
        spine_x = (c_bot + dxdy * (0 - r_bot)) * sp
        self.spine = img.spine_layer(rng, X, Y, spine_x, dxdy, view.primary_deg, view.secondary_deg,
                                     params.spine_mu)
        self.spine = ndi.gaussian_filter(self.spine, 2.5 / sp)  # soft edges (the spine is far from the detector)
        dome_r, dome_c, _ = view.project(pat.heart.centre + np.array([10.0, 0.0, -50.0 - rng.uniform(0, 15)]))
        thorax = img.rib_layer(rng, X, Y, int(rng.integers(5, 9)), params.rib_mu_per_mm)
        thorax += img.diaphragm_layer(rng, X, Y, dome_r * sp, (dome_c + rng.uniform(-60, 60) / sp) * sp,
                                      params.diaphragm_mu)
        thorax += img.smooth_noise(rng, (H, W), 2.6, params.lung_texture)
        thorax += img.lung_markings(rng, (H, W), sp, params.lung_markings, params.lung_markings_mu_per_mm)
        thorax += img.smooth_noise(rng, (H, W), 2.0, params.lung_texture * 0.35)
        thorax += img.smooth_noise(rng, (H, W), 4.0, 0.2)
        self.thorax = thorax
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        rr2 = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) / (0.5 * (rows**2 + cols**2) / 2)
        self.fixed = (base + params.vignetting * rr2).astype(np.float32)
        self.collimator = None
        if rng.random() < params.collimator_prob:
            # Collimator blades and a rounded-corner shutter a few % inside the field (as on real runs).
            e = rng.uniform(0.0, 0.05, 4) * np.array([rows, rows, cols, cols])
            corner = rng.uniform(0.03, 0.15) * min(rows, cols)
            dy = np.maximum(np.maximum(e[0] + corner - yy, yy - (rows - 1 - e[1] - corner)), 0)
            dx = np.maximum(np.maximum(e[2] + corner - xx, xx - (cols - 1 - e[3] - corner)), 0)
            outside = np.hypot(dy, dx) - corner
            self.fixed += (4.0 * img._sigmoid(outside / 1.0)).astype(np.float32)
            self.collimator = [float(x) for x in e] + [float(corner)]
        self.rays = view.pixel_rays(rows // 4, cols // 4, 4)
        self.up_r = img.linear_upsampler(rows // 4, rows)
        self.up_c = img.linear_upsampler(cols // 4, cols)
        self.deposit_frames: list[list[dict]] = [[] for _ in pat.deposits]
        self.patches: list[list] = [[] for _ in pat.deposits]  # per deposit: (frame, r0, c0, mask)

    # -- per frame --------------------------------------------------------------------------------
    def motion(self, k: int) -> anat.MotionState:
        p, tl = self.p, self.tl
        v = float(anat.volume_curve(tl["phase"][k], p.systole_fraction))
        return anat.MotionState(v, tl["resp"][k] + tl["pan"][k], p.contraction, p.longitudinal, p.twist_deg)

    def contrast(self, k: int, arc_frac):
        """Iodine concentration (0-1) at frame k for samples at fractional tree distance ``arc_frac``."""
        tl = self.tl
        x = (tl["t"][k] - tl["t0"] - 0.4 * tl["wash"] * arc_frac) / (0.6 * tl["wash"])
        return np.sin(0.5 * np.pi * np.clip(x, 0.0, 1.0))

    def _shift_px(self, translation, depth_point):
        r0, c0, _ = self.view.project(depth_point)
        r1, c1, _ = self.view.project(depth_point + translation)
        return r1 - r0, c1 - c0

    @property
    def has_metal(self) -> bool:
        """Whether dense metal that is not calcium (wires, clips, stents) is in the scene."""
        return self.metal_wires is not None or bool(self.metal_heart)

    def frame(self, k: int, rng, calcium_out: np.ndarray, metal_out: np.ndarray | None = None) -> np.ndarray:
        p, view, pat, tl = self.p, self.view, self.pat, self.tl
        rows, cols, m = p.rows, p.cols, self.margin
        ms = self.motion(k)
        # Background: spine moves with the table only, the thorax also with respiration.
        dr, dc = self._shift_px(tl["pan"][k], np.array([0.0, pat.spine_y_mm, 0.0]))
        L = img.crop_shift(self.spine, m - dr, m - dc, rows, cols)
        dr, dc = self._shift_px(tl["pan"][k] + 1.2 * tl["resp"][k], pat.heart.centre)
        L += img.crop_shift(self.thorax, m - dr, m - dc, rows, cols)
        if metal_out is not None:
            # Truth only: the metal alone, moved as it is in L (wires with the thorax, the rest below).
            metal_L = np.zeros((rows, cols), np.float32)
            if self.metal_wires is not None:
                metal_L += img.crop_shift(self.metal_wires, m - dr, m - dc, rows, cols)
        L += self.fixed
        # Heart silhouette: chords of the deformed quadrics on a coarse grid.
        M, t = anat.affine(pat.heart, ms)
        Minv = np.linalg.inv(M)
        quads = [(Minv.T @ A @ Minv, M @ mm + t, mu * p.heart_mu_per_mm) for A, mm, mu in pat.heart.quadrics]
        heart = img.quadric_chords(self.rays, view.source, quads)
        # Soft silhouette: the heart moves during the exposure and its edge is rounded by epicardial fat.
        heart = ndi.gaussian_filter(heart, 0.8)
        L += img.upsample(heart, self.up_r, self.up_c)
        # Vessels and catheter.
        pts = anat.deform(self.vessel_points, pat.heart, ms)
        r, c, s = view.project(pts)
        self.centerlines[k, :, 0] = r
        self.centerlines[k, :, 1] = c
        conc = self.contrast(k, self.arc_frac)
        mu = p.blood_mu_per_mm + self.contrast_mu * conc
        rads = [self.vessel_radius * s / view.spacing_mm]
        rr, cc, ww = [r], [c], [1.5 * self.vessel_step * mu]
        if p.catheter:
            cp = anat.deform(self.cath_points, pat.heart, ms, weight=self.cath_weight)
            cr, ccol, cs = view.project(cp)
            lumen = float(np.clip((tl["t"][k] - tl["t0"]) / 0.15, 0.0, 1.0)) * self.contrast_mu
            rr += [cr, cr]
            cc += [ccol, ccol]
            rads += [1.0 * cs / view.spacing_mm, 0.7 * cs / view.spacing_mm]
            ww += [1.5 * self.cath_step * p.catheter_mu_per_mm, 1.5 * self.cath_step * (lumen - p.catheter_mu_per_mm)]
        if p.reflux > 0:
            # Contrast refluxing into the aortic sinus at the catheter tip: a puff at the injection
            # that settles to a third while the injection goes on.
            dt_inj = tl["t"][k] - tl["t0"]
            puff = 0.0 if dt_inj <= 0 else min(1.0, dt_inj / 0.2) * (0.35 + 0.65 * np.exp(-dt_inj / 0.8))
            if puff > 0:
                o = anat.deform(self.reflux_centre[None], pat.heart, ms)
                orow, ocol, osc = view.project(o)
                rr.append(orow)
                cc.append(ocol)
                rads.append(np.array([self.reflux_radius_mm]) * osc / view.spacing_mm)
                ww.append(np.array([p.reflux * puff * self.contrast_mu / 0.17]))
        for pts3, rad_mm, weight in self.metal_heart:
            # Clips and stents ride on the heart like the vessels they sit on.
            mr, mc, msc = view.project(anat.deform(pts3, pat.heart, ms))
            rr.append(mr)
            cc.append(mc)
            rads.append(rad_mm * msc / view.spacing_mm)
            ww.append(weight)
            if metal_out is not None:
                img.splat_spheres((rows, cols), mr, mc, rad_mm * msc / view.spacing_mm, weight, out=metal_L)
        if metal_out is not None:
            metal_out |= metal_L > METAL_FOOTPRINT_MIN
        img.splat_spheres((rows, cols), np.concatenate(rr), np.concatenate(cc), np.concatenate(rads),
                          np.concatenate(ww), out=L)
        # Calcium.
        for j, dep in enumerate(pat.deposits):
            self._deposit(k, j, dep, ms, L, calcium_out)
        out = img.detect(L, rng, p.photons, p.blur_px, self.white, self.gain, self.max_value,
                         tl["exposure"][k])
        gamma = self.display_gamma
        if gamma is not None:
            out = np.rint(self.max_value * (out / self.max_value) ** gamma)
        if self.display_processing is not None:
            # After the display curve, as a system processes the image it stores.
            out = np.clip(np.rint(img.xa_unsharp(out, self.display_processing)), 0, self.max_value)
        return out.astype(np.uint8 if p.bits == 8 else np.uint16)

    def _deposit(self, k, j, dep, ms, L, calcium_out):
        view, rows, cols = self.view, self.p.rows, self.p.cols
        cen = anat.deform(dep.centres, self.pat.heart, ms)
        r, c, s = view.project(cen)
        rad = dep.radius_mm * s / view.spacing_mm
        r0 = int(np.floor((r - rad).min())) - 1
        r1 = int(np.ceil((r + rad).max())) + 2
        c0 = int(np.floor((c - rad).min())) - 1
        c1 = int(np.ceil((c + rad).max())) + 2
        rec = {"frame": k, "visible": False}
        R0, R1, C0, C1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
        if R1 > R0 and C1 > C0:
            yy, xx = np.mgrid[R0:R1, C0:C1]
            d2 = (yy[None] - r[:, None, None]) ** 2 + (xx[None] - c[:, None, None]) ** 2
            q = 1.0 - d2 / (rad[:, None, None] ** 2)
            thick = 2.0 * dep.radius_mm * np.sqrt(np.clip(q, 0, None)).max(axis=0)
            mask = (q > 0).any(axis=0)
            if not mask.any():
                i = len(r) // 2
                ri, ci = int(round(r[i])), int(round(c[i]))
                if R0 <= ri < R1 and C0 <= ci < C1:
                    mask[ri - R0, ci - C0] = True
                    thick[ri - R0, ci - C0] = 4.0 / 3.0 * dep.radius_mm * min(1.0, 2.0 / 3.0 * np.pi * rad[i] ** 2)
            if mask.any():
                L[R0:R1, C0:C1] += (dep.mu_per_mm * thick).astype(np.float32)
                calcium_out[R0:R1, C0:C1] |= mask
                ys, xs = np.nonzero(mask)
                ext = np.hypot(r.max() - r.min(), c.max() - c.min()) + 2 * rad.mean()
                rec.update(visible=True, row=float(ys.mean() + R0), col=float(xs.mean() + C0),
                           area_px=int(mask.sum()),
                           area_mm2=float(mask.sum() * view.spacing_mm**2),
                           length_px=float(ext), length_mm=float(ext * view.spacing_mm),
                           peak_attenuation=float((dep.mu_per_mm * thick).max()))
                self.patches[j].append((k, R0, C0, mask.copy()))
        rec["center_row"] = float(r.mean())
        rec["center_col"] = float(c.mean())
        self.deposit_frames[j].append(rec)

    def truth(self, seed, patient, acquisition) -> dict:
        p, tl, view, pat = self.p, self.tl, self.view, self.pat
        dt = tl["dt"]
        r_frames = [float(x / dt) for x in tl["r_times"] if 0 <= x <= tl["t"][-1]]
        deposits = []
        for j, dep in enumerate(pat.deposits):
            peak = dep.mu_per_mm * dep.width_mm
            deposits.append({
                "id": dep.id, "vessel": dep.vessel, "length_mm": dep.length_mm, "width_mm": dep.width_mm,
                "mu_per_mm": dep.mu_per_mm, "peak_attenuation": peak, "faint": bool(peak < p.faint_attenuation),
                "arclength_mm": dep.arclength_mm, "frames": self.deposit_frames[j],
            })
        contrast = [float(self.contrast(k, np.array([0.0]))[0]) for k in range(p.n_frames)]
        return {
            "format": "cac-phantom-truth/1",
            "seed": int(seed), "patient": int(patient), "acquisition": int(acquisition),
            "n_frames": p.n_frames, "rows": p.rows, "cols": p.cols,
            "fps": p.fps, "frame_time_ms": 1000.0 * dt, "bits": p.bits,
            "spacing_mm": [view.spacing_mm, view.spacing_mm],
            "imager_pixel_spacing_mm": view.imager_spacing_mm, "magnification": view.magnification,
            "phase": [float(x) for x in tl["phase"]],
            "contraction": [float(anat.volume_curve(x, p.systole_fraction)) for x in tl["phase"]],
            "r_wave_frames": r_frames,
            "heart_rate_bpm": float(tl["hr"]),
            "heart_rate_per_beat_bpm": [float(60.0 / x) for x in tl["rrs"]],
            "beat_start_s": [float(x) for x in tl["r_times"][:-1]],
            "onset_frame": int(tl["onset"]),
            "contrast_full_frame": int(min(p.n_frames - 1, math.ceil((tl["t0"] + tl["wash"]) / dt))),
            "contrast_start_s": float(tl["t0"]),
            "wash_in_s": float(tl["wash"]),
            "contrast_at_ostium": contrast,
            "respiration": {"hz": float(tl["resp_f"]), "amplitude_mm": float(tl["resp_a"])},
            "table_pan": tl["pan_info"],
            "side": pat.side,
            "view": {"primary_deg": view.primary_deg, "secondary_deg": view.secondary_deg,
                     "sid_mm": view.sid_mm, "sod_mm": view.sod_mm},
            "calcifications": deposits,
            # [top, bottom, left, right] blade insets and the shutter's corner radius, px (None: no collimator)
            "collimator": self.collimator,
            "metal": self.metal_info,
            # harmonization and edge-enhancement kernels (px) and gains, or None: not processed
            "display_processing": (None if self.display_processing is None else dict(zip(
                ("harmonization_px", "harmonization_gain", "edge_px", "edge_gain"), self.display_processing))),
            "params": p.to_dict(),
        }
