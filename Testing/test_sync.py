"""Cardiac synchronization (CACIdentifierLib.sync, `cac sync`).

References: eq. 1 against a direct float64 numpy evaluation, block means
against scikit-image, the change-point fit against brute-force least squares,
R-peak timing against the known peaks of a synthetic ECG, the period and the
pairs against the phantom's truth (CACTrainerLib.phantom) and the R Wave
Pointer of the real RCA cine.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from cac.cli import main
from CACIdentifierLib import sync
from CACIdentifierLib.errors import CacError, CacWarning
from CACIdentifierLib.sync.blas import openblas_fns
from CACIdentifierLib.sync.onset import fit_ramp
from CACIdentifierLib.sync.period import period_bounds
from CACIdentifierLib.sync.phase import circ_dist
from conftest import BIPLANE, GE, RCA, needs_data, require
from synthetic import synthetic_cine

JSON_KEYS = {"onset_frame", "period_frames", "heart_rate_bpm", "phase", "pairs", "signal", "confidence",
             "ecg_used", "method"}


def _eq1_direct(frames, ref=0):
    f = frames.astype(np.float64)
    num = np.sqrt(((f - f[ref]) ** 2).sum(axis=(1, 2)))
    den = np.sqrt((f[ref] ** 2).sum()) + np.sqrt((f**2).sum(axis=(1, 2)))
    return num / den


def _pair_errors(pairs, phase):
    phase = np.asarray(phase)
    return np.array([circ_dist(phase[a], phase[b]) for a, b in pairs])


@pytest.fixture(scope="module")
def rca_cine():
    from CACIdentifierLib.cine_io import load_cine

    return load_cine(require(RCA))


@pytest.fixture(scope="module")
def phantom_case():
    from CACTrainerLib import phantom
    params = phantom.PhantomParams(rows=128, cols=128, n_frames=150, fps=15.0, heart_rate_bpm_range=(75.0, 75.0))
    return phantom.generate_acquisition(params, seed=11)


# ----------------------------------------------------------------------------- eq. 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float64])
def test_eq1_matches_direct_numpy(dtype):
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 4095
    frames = (rng.random((9, 33, 47)) * top).astype(dtype)
    for ref in (0, 4):
        np.testing.assert_allclose(sync.ecg_like_signal(frames, ref), _eq1_direct(frames, ref), rtol=1e-12, atol=0)
    assert sync.ecg_like_signal(frames)[0] == 0.0


@needs_data
def test_eq1_on_real_cine_matches_direct_numpy(rca_cine):
    frames = rca_cine.frames[:24]
    np.testing.assert_allclose(sync.ecg_like_signal(frames), _eq1_direct(frames), rtol=1e-12)


def test_eq1_zero_frames_and_bad_shapes():
    frames = np.zeros((3, 4, 4), np.uint8)
    assert np.all(sync.ecg_like_signal(frames) == 0)
    with pytest.raises(CacError):
        sync.ecg_like_signal(np.zeros((4, 4)))
    with pytest.raises(CacError):
        sync.ecg_like_signal(np.zeros((1, 4, 4)))
    with pytest.raises(CacError):
        sync.ecg_like_signal(np.zeros((3, 4, 4)), reference=5)


def test_block_mean_matches_skimage():
    from skimage.measure import block_reduce

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 512, 515), dtype=np.uint8)
    got = sync.block_mean(frames)
    want = block_reduce(frames[:, :512, :512].astype(np.float64), (1, 4, 4), np.mean)
    assert got.shape == (3, 128, 128)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- onset


def test_ramp_fit_matches_brute_force_least_squares():
    rng = np.random.default_rng(2)
    n = 30
    k = np.arange(n)
    y = 0.05 * rng.standard_normal(n) + np.clip((k - 11) / 6, 0, 1)
    valid = rng.random(n) > 0.1
    t0, t1, a, b, sse = fit_ramp(y, valid)
    best = None
    for T0 in range(-1, n - 1):
        for T1 in range(T0 + 1, n):
            r = np.clip((k - T0) / (T1 - T0), 0, 1)
            A = np.stack([np.ones(n), r], 1)[valid]
            coef, *_ = np.linalg.lstsq(A, y[valid], rcond=None)
            e = float(((A @ coef - y[valid]) ** 2).sum())
            if coef[1] > 0 and (best is None or e < best[0]):
                best = (e, T0, T1, coef[0], coef[1])
    assert (t0, t1) == (best[1], best[2])
    np.testing.assert_allclose([a, b, sse], [best[3], best[4], best[0]], rtol=1e-7, atol=1e-10)


def test_onset_on_phantom(phantom_case):
    truth = phantom_case.truth["onset_frame"]
    onset, score = sync.detect_contrast_onset(phantom_case.frames)
    assert abs(onset - truth) <= 3, (onset, truth)
    assert score > 0.5


@needs_data
def test_onset_on_real_rca(rca_cine):
    # The vessel fills from about frame 17 (looked at: frames 15-21); exposure settles in frames 0-7.
    onset, score = sync.detect_contrast_onset(rca_cine.frames)
    assert 12 <= onset <= 22
    assert score > 0.9


# ----------------------------------------------------------------------------- period and pairs


@pytest.mark.parametrize("period", [9.0, 12.37, 17.6])
def test_period_of_synthetic_moving_texture(period):
    """A textured blob moving on a non-sinusoidal periodic path, no contrast (onset given)."""
    rng = np.random.default_rng(3)
    n, size = 120, 64
    texture = rng.random((size * 2, size * 2)).astype(np.float32)
    from scipy import ndimage

    texture = ndimage.gaussian_filter(texture, 2) * 200 + 20
    t = np.arange(n)
    ph = (t / period) % 1.0
    shift = np.where(ph < 0.3, ph / 0.3, 1 - (ph - 0.3) / 0.7) * 6.0  # fast out, slow back
    frames = np.stack([ndimage.shift(texture, (s, 0.5 * s), order=1)[32:96, 32:96] for s in shift])
    frames = frames + rng.normal(0, 1.0, frames.shape)
    res = sync.synchronize(frames.astype(np.float32), 66.7, onset=n // 2)
    assert res.periodic
    assert abs(res.period_frames / period - 1) < 0.02, res.period_frames
    err = _pair_errors(res.pairs, ph)
    assert np.median(err) < 0.03


def test_paper_method_is_fft_peak_and_k_plus_m_t():
    rng = np.random.default_rng(4)
    n = 96
    frames, truth = synthetic_cine(n_frames=n, size=64, fps=15, bpm=75, rr_jitter=0.0, respiration_px=0,
                                   seed=4, onset_fraction=0.5)
    res = sync.synchronize(frames, 1000 / 15, method="paper", onset=truth["onset_frame"])
    s = np.asarray(res.signal)
    spec = np.abs(np.fft.rfft(s - s.mean()))
    bins = np.arange(spec.size)
    lo, hi = period_bounds(n, 1000 / 15)
    band = (bins >= 1) & (n / np.maximum(bins, 1) >= lo) & (n / np.maximum(bins, 1) <= hi)
    k = bins[band][np.argmax(spec[band])]
    assert res.period_frames == pytest.approx(n / k)
    for a, b in res.pairs:
        m = (b - a) / res.period_frames
        assert abs(b - (a + round(m) * res.period_frames)) <= 0.5 + 1e-9
    del rng


def test_default_beats_paper_on_phantom(phantom_case):
    truth_phase = np.asarray(phantom_case.truth["phase"])
    onset = phantom_case.truth["onset_frame"]
    r_true = np.asarray(phantom_case.truth["r_wave_frames"], float)
    period_true = float(np.mean(np.diff(r_true)))
    ft = phantom_case.frame_time_ms
    default = sync.synchronize(phantom_case.frames, ft)
    paper = sync.synchronize(phantom_case.frames, ft, method="paper")
    assert default.periodic and default.method == "default"
    assert abs(default.period_frames / period_true - 1) < 0.03
    e_def = _pair_errors(default.pairs, truth_phase)
    e_pap = _pair_errors(paper.pairs, truth_phase)
    assert np.median(e_def) < 0.03 and np.percentile(e_def, 90) < 0.08
    assert np.median(e_def) <= np.median(e_pap) + 1e-9
    # every non-contrast frame once, but the guard band before the detected onset, paired with a
    # contrast frame where contrast has arrived
    nc = [a for a, _ in default.pairs]
    assert default.onset_detected and default.guard_frames == sync.ONSET_GUARD_FRAMES
    assert nc == list(range(default.onset_frame - sync.ONSET_GUARD_FRAMES))
    assert [a for a, _ in default.image.pairs] == list(range(default.onset_frame))  # the estimate keeps them
    assert default.onset_frame <= onset + 3
    for a, b in default.pairs:
        assert a < default.onset_frame <= default.contrast_start <= b < len(truth_phase)
    assert len(default.phase) == len(truth_phase)
    assert all(0 <= p < 1 for p in default.phase)


def test_pair_by_phase_circular_and_ties():
    phase = np.array([0.98, 0.5, 0.02, 0.49, 0.51, 0.97])
    assert sync.pair_by_phase(phase, [0], [2, 3, 4]) == [[0, 2]]  # 0.98 -> 0.02 across the wrap
    # 0.49 and 0.51 tie for 0.5: the nearer in time wins, or the smaller image distance when given
    assert sync.pair_by_phase(phase, [1], [3, 4], tolerance=0.02) == [[1, 3]]
    dist = np.zeros((6, 6))
    dist[1, 3], dist[1, 4] = 5.0, 1.0
    assert sync.pair_by_phase(phase, [1], [3, 4], frame_distance=dist, tolerance=0.02) == [[1, 4]]


def test_phase_from_landmarks_linear_and_extrapolated():
    ph = sync.phase_from_landmarks([2.0, 12.0, 17.0], 20)
    np.testing.assert_allclose(ph[[2, 7, 12, 17]], [0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(ph[0], -2 / 7.5)  # mean RR 7.5 outside
    np.testing.assert_allclose(ph[19], 2 + 2 / 7.5)


# ----------------------------------------------------------------------------- ECG


def test_r_peaks_from_synthetic_ecg():
    fs = 500.0
    t = np.arange(0, 5000, 1000 / fs)
    r_true = np.array([0.0, 410.0, 1230.0, 2050.0, 2790.0, 3700.0, 4480.0])
    x = 0.05 * np.sin(2 * np.pi * t / 3000)  # baseline wander
    for r in r_true:
        x += np.exp(-0.5 * ((t - r) / 8.0) ** 2) - 0.2 * np.exp(-0.5 * ((t - r - 30) / 10.0) ** 2)
    got = sync.r_peaks_from_ecg(-x, t)  # inverted lead: polarity is found
    np.testing.assert_allclose(got, r_true[1:], atol=2.0)
    got_edges = sync.r_peaks_from_ecg(-x, t, edges=True)
    np.testing.assert_allclose(got_edges, r_true, atol=2.0)


@needs_data
def test_ecg_gives_phase_on_rca(rca_cine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sync.synchronize_cine(rca_cine)
    assert res.ecg_used and res.ecg is not None
    r = [b for b in res.ecg.beat_frames if b >= 10]
    assert r == [19.0, 52.0, 76.0]
    assert list(np.diff(r)) == [33.0, 24.0]
    assert res.period_frames == pytest.approx(28.5)
    assert res.heart_rate_bpm == pytest.approx(60000 / (28.5 * 33))
    for k in (19, 52, 76):
        assert res.phase[k] == pytest.approx(0.0, abs=1e-12)
    assert res.phase[35] == pytest.approx(16 / 33)
    # the image-based estimate is carried beside the ECG
    assert res.image is not None and res.image.periodic
    assert abs(res.image.period_frames / 28.5 - 1) < 0.15
    # its beats fall within 4 frames of the two R waves in the fully contrasted part
    for rw in (52, 76):
        assert min(abs(b - rw) for b in res.image.beat_frames) <= 4


@needs_data
def test_no_ecg_uses_images(rca_cine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sync.synchronize_cine(rca_cine, use_ecg=False)
    assert not res.ecg_used and res.ecg is None
    assert res.period_frames == pytest.approx(res.image.period_frames)
    guard = res.onset_frame - res.guard_frames
    assert res.pairs == [p for p in res.image.pairs if p[0] < guard]  # less the guard band before the onset


# ----------------------------------------------------------------------------- no periodicity, blank frames


@needs_data
def test_static_phantom_is_not_periodic():
    from CACIdentifierLib.cine_io import load_cine

    cine = load_cine(GE)
    for method in ("default", "paper"):
        with pytest.warns(Warning):
            res = sync.synchronize_cine(cine, method=method)
        assert not res.periodic
        assert res.confidence < sync.PERIODIC_THRESHOLD
        out = res.to_json()
        assert out["period_frames"] is None and out["heart_rate_bpm"] is None
        assert any("periodicity" in w for w in res.warnings)
        assert any("contrast" in w for w in res.warnings)
        assert len(res.pairs) == res.onset_frame  # explicit fallback still pairs every frame


@needs_data
def test_blank_frame_is_not_used():
    from CACIdentifierLib.cine_io import load_cine

    cine = load_cine(BIPLANE)
    assert 0 in cine.blank_frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sync.synchronize_cine(cine, use_ecg=False)
    assert res.signal[1] == 0.0  # first non-blank frame is the reference
    assert all(0 not in p for p in res.pairs)
    assert len(res.phase) == 17


# ----------------------------------------------------------------------------- errors and CLI


def test_bad_input_is_a_clear_error():
    frames, _ = synthetic_cine(n_frames=40, size=32, seed=1)
    with pytest.raises(CacError, match="no non-contrast frames"):
        sync.synchronize(frames, 66.7, onset=0)
    with pytest.raises(CacError, match="no contrast frames"):
        sync.synchronize(frames, 66.7, onset=40)
    with pytest.raises(CacError, match="method"):
        sync.synchronize(frames, 66.7, method="fourier")
    with pytest.raises(CacError, match="frame time"):
        sync.synchronize(frames, -5)


@needs_data
def test_cli_json_has_exactly_the_keys(capsys):
    assert main(["sync", str(RCA), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == JSON_KEYS
    assert out["ecg_used"] is True and out["method"] == "default"
    assert len(out["phase"]) == len(out["signal"]) == 96
    assert all(0 <= p < 1 for p in out["phase"])
    assert all(len(p) == 2 and p[0] < out["onset_frame"] <= p[1] for p in out["pairs"])
    assert main(["sync", str(RCA), "--json", "--no-ecg", "--method", "paper"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == JSON_KEYS and out["ecg_used"] is False and out["method"] == "paper"
    # The guard band before the detected onset: the default, and none when asked
    assert main(["sync", str(RCA), "--json"]) == 0
    guarded = {a for a, _ in json.loads(capsys.readouterr().out)["pairs"]}
    assert main(["sync", str(RCA), "--json", "--onset-guard", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    plain = {a for a, _ in out["pairs"]}
    assert plain == set(range(out["onset_frame"]))
    assert guarded == set(range(out["onset_frame"] - sync.ONSET_GUARD_FRAMES))
    assert main(["sync", str(RCA), "--onset-guard", "-1"]) == 2
    assert "onset guard" in capsys.readouterr().err
    import argparse

    from cac import cli_identify, cli_sync

    for name, module in (("identify", cli_identify), ("sync", cli_sync)):  # the help states the library's default
        subparsers = argparse.ArgumentParser().add_subparsers()
        module.register(subparsers)
        text = " ".join(subparsers.choices[name].format_help().split())  # as `cac NAME --help` prints it
        guard = text[text.rindex("--onset-guard N"):]  # the option line, not the usage
        assert f"default: {sync.ONSET_GUARD_FRAMES}," in guard[:300]


@needs_data
def test_cli_plot_and_errors(tmp_path, capsys):
    png = tmp_path / "sync.png"
    assert main(["sync", str(RCA), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "period" in capsys.readouterr().out
    assert main(["sync", str(RCA), "--plot", str(png)]) == 2  # no overwrite without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cac: error:")
    assert main(["sync", str(RCA), "--onset", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no non-contrast frames" in err[0]
    assert not list(tmp_path.glob(".*tmp*"))


def test_blas_threads_restored_after_synchronize():
    fns = openblas_fns()
    if fns is None:
        pytest.skip("numpy's OpenBLAS not found: nothing to restore")
    get, put = fns
    before = get()
    frames, _ = synthetic_cine(n_frames=40, size=32, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync.synchronize(frames, 66.7)
        with pytest.raises(CacError):
            sync.synchronize(frames, 66.7, onset=0)
    assert get() == before


@needs_data
def test_blank_frame_found_without_being_told():
    """Raw frames without Cine.blank_frames: the white frame 0 of the biplane cine is found and skipped."""
    import pydicom

    frames = pydicom.dcmread(BIPLANE).pixel_array
    with pytest.warns(Warning, match="look blank"):
        res = sync.synchronize(frames, 66.0)
    assert res.blank_frames == [0]
    assert res.signal[1] == 0.0
    assert all(0 not in p for p in res.pairs)
    # () means "no blank frames": the white frame then reads as an arrival at frame 0
    with warnings.catch_warnings(), pytest.raises(CacError, match="no non-contrast frames"):
        warnings.simplefilter("ignore")
        sync.synchronize(frames, 66.0, blank_frames=())


def _dense_one_cycle_operator(t, period):
    """The one-cycle mean operator as the whole matrix (the formula of the former N x N code)."""
    m, half = t.size, period / 2
    if t[-1] - t[0] + 1 <= 1.5 * period:
        return np.full((m, m), 1.0 / m)

    def window(c):
        w = np.clip(np.minimum(c + half, t + 0.5) - np.maximum(c - half, t - 0.5), 0, None)
        return w / w.sum()

    first, last = t[0] - 0.5 + half, t[-1] + 0.5 - half
    out = np.array([window(c) for c in np.clip(t, first, last)])
    for k in np.nonzero(t < first)[0]:
        out[k] = window(first) + (t[k] - first) / half * (window(first + half) - window(first))
    for k in np.nonzero(t > last)[0]:
        out[k] = window(last) + (last - t[k]) / half * (window(last - half) - window(last))
    return out


def test_blocked_frame_products_match_dense_gram_algebra():
    """One-cycle mean, lag sums and lazy clip distances against the whole frames x frames matrices."""
    from CACIdentifierLib.sync import gram

    rng = np.random.default_rng(5)
    t = np.concatenate([np.arange(0, 70), np.arange(72, 150)]).astype(float)  # a gap (blank frames)
    y = rng.standard_normal((t.size, 40))
    for period in (3.3, 17.6, 120.0):  # 120: shorter than 1.5 periods, the mean
        ref = _dense_one_cycle_operator(t, period) @ y
        np.testing.assert_allclose(gram.one_cycle_mean(t, period, y), ref, atol=1e-12)
    g = y @ y.T
    lag = t[None, :] - t[:, None]
    sums = gram.lag_sums(y, t, 30)
    np.testing.assert_allclose(sums, [g[lag == L].sum() for L in range(31)], rtol=1e-10, atol=1e-9)
    maps = gram.clip_maps(t, 4)
    clip = sum(g[np.ix_(m, m)] for m in maps)
    lazy = gram.LazyGram(y, maps, frames=t.astype(int))
    np.testing.assert_allclose(lazy.rows([0, 5, 140]), clip[[0, 5, 140]], rtol=1e-10, atol=1e-9)
    d = np.diag(clip)[:, None] + np.diag(clip)[None, :] - 2 * clip
    np.testing.assert_allclose(lazy[72, [0, 69, 149]], d[70, [0, 69, 147]], rtol=1e-10, atol=1e-9)
    assert lazy.nearest([3, 90], np.arange(60, 148)).tolist() == (60 + d[[3, 90]][:, 60:148].argmin(1)).tolist()


def test_synchronize_memory_is_linear_in_frames():
    """4x the frames costs at most 6x the peak memory (frames x frames matrices would cost about 16x)."""
    import tracemalloc

    def peak(n):
        # 16 x 16 pixels (the cine and its features stay small); clean, so the period is found and
        # every step of the default method runs.
        frames, _ = synthetic_cine(n_frames=n, size=16, fps=15.0, bpm=70.0, noise=0.0, respiration_px=0, seed=3)
        tracemalloc.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sync.synchronize(frames, 1000 / 15)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res.periodic and abs(res.period_frames - 12.86) < 0.5  # the default method ran all its steps
        return out

    small, large = peak(800), peak(3200)
    assert large < 6 * small, (small, large)


def test_onset_guard_band(phantom_case):
    """The guard leaves out the frames just before a detected onset, never a given onset's, and keeps one frame."""
    ft = phantom_case.frame_time_ms
    plain = sync.synchronize(phantom_case.frames, ft, onset_guard=0)
    guarded = sync.synchronize(phantom_case.frames, ft, onset_guard=3)
    assert plain.onset_detected and plain.guard_frames == 0
    assert plain.onset_frame == guarded.onset_frame and plain.phase == guarded.phase
    onset = plain.onset_frame
    assert sorted({a for a, _ in plain.pairs}) == list(range(onset))
    assert guarded.guard_frames == 3 and guarded.non_contrast_frames == list(range(onset - 3))
    # the pairs kept are exactly the unguarded ones of those frames
    assert guarded.pairs == [p for p in plain.pairs if p[0] < onset - 3]
    with pytest.warns(CacWarning, match="ignored with the given onset"):  # said, not silently dropped
        given = sync.synchronize(phantom_case.frames, ft, onset=onset, onset_guard=3)
    assert given.guard_frames == 0 and given.non_contrast_frames == list(range(onset))
    huge = sync.synchronize(phantom_case.frames, ft, onset_guard=10_000)
    assert huge.non_contrast_frames == [0] and huge.guard_frames == onset - 1
    with pytest.raises(CacError, match="onset guard"):
        sync.synchronize(phantom_case.frames, ft, onset_guard=-1)


def test_onset_guard_benchmark_counts():
    """benchmarks/onset_guard.py's counts on hand-made cases (late, early, undetected onsets)."""
    from benchmark_scripts import load

    rows = [{"onset_true": 10, "onset_found": 13, "detected": True},   # 3 frames late
            {"onset_true": 20, "onset_found": 18, "detected": True},   # 2 frames early
            {"onset_true": 30, "onset_found": 32, "detected": False}]  # fallback: no guard
    g0, g2 = load("onset_guard").guard_table(rows, [0, 2])
    assert (g0["iodine_frames"], g0["cines_with_iodine"], g0["nc_frames_lost"]) == (3 + 0 + 2, 2, 0 + 2 + 0)
    assert (g2["iodine_frames"], g2["cines_with_iodine"], g2["nc_frames_lost"]) == (1 + 0 + 2, 2, 0 + 4 + 0)
    assert g2["nc_frames"] == 60 and g2["cines"] == 3
