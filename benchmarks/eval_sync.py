"""Accuracy of cardiac synchronization: default vs paper method, on phantoms with known phase
and on the real cines with an ECG.  Writes the tables into docs/sync.md (between the
``<!-- eval:begin -->`` / ``<!-- eval:end -->`` markers) and figures docs/images/sync_*.png.

Phantoms: CACTrainerLib.phantom with the heart rate fixed per case (50-120 bpm), 7.5/15/30 fps,
about 13 s per cine (200 frames at 15 fps), default beat-to-beat variability (RR jitter 3 %)
and respiration (2-5 mm), plus groups with strong variability (RR jitter 8 %), early contrast
onset, strong respiration (5-8 mm), 512x512 cines and XA display processing.  Most cases are 128x128 (the phantom keeps
the field of view, so motion is the same in mm) to keep the run to a few minutes on 2 cores.

Metrics per case: period error (%) against the mean of the true RR intervals; pair phase error
= circular distance (cycles) between the true phases of the two frames of each pair, pooled
over the pairs of a group (median, 90th percentile); onset error (frames).

Real cines: the RCA cine's R Wave Pointer (0-based frames 19, 52, 76) and ECG curve.

Run: ``.venv/bin/python benchmarks/eval_sync.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from CACIdentifierLib import sync
from CACIdentifierLib.sync.phase import circ_dist, circ_mean

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "sync.md"
IMAGES = ROOT / "docs" / "images"
BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"


def cases(quick: bool):
    """(group, label, PhantomParams kwargs, seed) for every evaluated cine."""
    out = []
    seed = 100
    rates = [50, 70, 90, 120]
    for fps in (7.5, 15.0, 30.0):
        for bpm in rates:
            seed += 1
            out.append((f"{fps:g} fps", f"{bpm} bpm", dict(fps=fps, heart_rate_bpm_range=(bpm, bpm)), seed))
    for bpm in (55, 80, 110):
        seed += 1
        out.append(("RR jitter 8 %", f"{bpm} bpm", dict(heart_rate_bpm_range=(bpm, bpm), rr_jitter=0.08), seed))
        seed += 1
        out.append(("early onset", f"{bpm} bpm", dict(heart_rate_bpm_range=(bpm, bpm), early_onset_prob=1.0), seed))
        seed += 1
        out.append(("respiration 5-8 mm", f"{bpm} bpm",
                    dict(heart_rate_bpm_range=(bpm, bpm), respiration_mm_range=(5.0, 8.0)), seed))
    for bpm in (60, 95):
        seed += 1
        out.append(("512x512", f"{bpm} bpm", dict(rows=512, cols=512, heart_rate_bpm_range=(bpm, bpm)), seed))
    for bpm in (60, 85, 115):
        # Harmonization and edge enhancement, as systems store runs: eq. 1 sums squared differences,
        # which edge enhancement amplifies.
        seed += 1
        out.append(("display processing", f"{bpm} bpm",
                    dict(heart_rate_bpm_range=(bpm, bpm), display_processing_prob=1.0), seed))
    if quick:
        out = out[::4]
    return out


def run_phantoms(quick: bool):
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    rows = []
    for group, label, kw, seed in cases(quick):
        kw = dict(kw)
        fps = kw.get("fps", 15.0)
        kw.setdefault("rows", 128)
        kw.setdefault("cols", 128)
        params = PhantomParams(n_frames=int(round(13.33 * fps)), **kw)
        t = time.perf_counter()
        acq = generate_acquisition(params, seed=seed)
        t_gen = time.perf_counter() - t
        truth = np.asarray(acq.truth["phase"])
        rr = np.diff(np.asarray(acq.truth["r_wave_frames"], float))
        true_period = float(rr.mean())
        row = {"group": group, "label": label, "fps": fps, "frames": params.n_frames, "size": params.rows,
               "onset_true": int(acq.truth["onset_frame"]), "period_true": true_period}
        for method in ("default", "paper"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                res = sync.synchronize(acq.frames, acq.frame_time_ms, method=method)
                dt = time.perf_counter() - t
            err = np.array([circ_dist(truth[a], truth[b]) for a, b in res.pairs])
            row[method] = {
                "errors": err,
                "period_err_pct": None if res.period_frames is None else 100 * (res.period_frames / true_period - 1),
                "onset": res.onset_frame,
                "seconds": dt,
            }
        rows.append(row)
        d, p = row["default"], row["paper"]
        print(f"{group:<20s} {label:<8s} gen {t_gen:5.1f}s  onset {row['onset_true']:3d}->{d['onset']:3d}  "
              f"default {np.median(d['errors']):.3f}/{np.percentile(d['errors'], 90):.3f}  "
              f"paper {np.median(p['errors']):.3f}/{np.percentile(p['errors'], 90):.3f}", flush=True)
    return rows


def _fmt_pct(v):
    return "n/a" if v is None else f"{v:+.1f}"


def phantom_tables(rows) -> list[str]:
    lines = [
        "| group | cases | pairs | default median | default p90 | paper median | paper p90 | "
        "default \\|period err\\| % (max) | paper \\|period err\\| % (max) | onset err frames (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = []
    for r in rows:
        if r["group"] not in groups:
            groups.append(r["group"])
    for g in groups + ["all"]:
        sel = [r for r in rows if g == "all" or r["group"] == g]
        ed = np.concatenate([r["default"]["errors"] for r in sel])
        ep = np.concatenate([r["paper"]["errors"] for r in sel])
        pd = [abs(r["default"]["period_err_pct"]) for r in sel if r["default"]["period_err_pct"] is not None]
        pp = [abs(r["paper"]["period_err_pct"]) for r in sel if r["paper"]["period_err_pct"] is not None]
        nd = sum(r["default"]["period_err_pct"] is None for r in sel)
        npap = sum(r["paper"]["period_err_pct"] is None for r in sel)
        oe = [abs(r["default"]["onset"] - r["onset_true"]) for r in sel]
        name = f"**{g}**" if g == "all" else g
        lines.append(
            f"| {name} | {len(sel)} | {ed.size} | {np.median(ed):.3f} | {np.percentile(ed, 90):.3f} | "
            f"{np.median(ep):.3f} | {np.percentile(ep, 90):.3f} | "
            f"{np.median(pd):.1f} ({max(pd):.1f}){'' if not nd else f', {nd} none'} | "
            f"{np.median(pp):.1f} ({max(pp):.1f}){'' if not npap else f', {npap} none'} | "
            f"{np.median(oe):.0f} ({max(oe)}) |"
        )
    lines += ["", "Per case (pair phase error median / p90 in cycles; period error %):", "",
              "| group | case | frames | size | default | paper | default period % | paper period % | "
              "onset true -> found |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, p = r["default"], r["paper"]
        worse = " **(worse)**" if np.median(d["errors"]) > np.median(p["errors"]) + 1e-9 else ""
        lines.append(
            f"| {r['group']} | {r['label']} | {r['frames']} | {r['size']} | "
            f"{np.median(d['errors']):.3f} / {np.percentile(d['errors'], 90):.3f}{worse} | "
            f"{np.median(p['errors']):.3f} / {np.percentile(p['errors'], 90):.3f} | "
            f"{_fmt_pct(d['period_err_pct'])} | {_fmt_pct(p['period_err_pct'])} | "
            f"{r['onset_true']} -> {d['onset']} |"
        )
    return lines


def ecg_tables() -> list[str]:
    from CACIdentifierLib.cine_io import load_cine

    rca = DATA / "xa" / "rubo-rca-ecg-96f.dcm"
    if not rca.exists():
        return [f"(real cines not found at {DATA})"]
    cine = load_cine(rca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ecg_res = sync.synchronize_cine(cine)
    pointer = np.asarray(cine.r_wave_frames, float)
    ecg_phase = np.asarray(ecg_res.ecg.phase)
    lines = [
        f"RCA cine ({cine.n_frames} frames, {cine.frame_time_ms:g} ms): R Wave Pointer (0-based) "
        f"{', '.join(f'{x:g}' for x in pointer)} (RR {', '.join(f'{x:g}' for x in np.diff(pointer))} frames, "
        f"mean {np.diff(pointer).mean():.2f}); the ECG curve also shows an R wave at the very first sample "
        f"(frame {ecg_res.ecg.beat_frames[0]:.1f}), so the RR before frame 19 is about 19 frames.  "
        f"Detected contrast onset: frame {ecg_res.onset_frame} (fully arrived from {ecg_res.contrast_start}).",
        "",
        "| method | image period (frames) | vs pointer mean RR 28.5 | image beats (phase 0) | "
        "nearest image beat - R wave (19, 52, 76) | phase error vs ECG, frames 19-76: median / p90 | "
        "pairs' ECG phase error: median / p90 | confidence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in ("default", "paper"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sync.synchronize_cine(cine, method=method, use_ecg=False)
        beats = np.asarray(res.beat_frames)
        offs = [float(beats[np.argmin(np.abs(beats - r))] - r) for r in pointer] if beats.size else []
        ph = np.asarray(res.phase)
        k = np.arange(19, 77)
        shift = circ_mean(ecg_phase[k] - ph[k])  # phase 0 is a different landmark: align once
        pe = circ_dist(ph[k] + shift, ecg_phase[k])
        # the truth for the pairs: ECG phase (0 at each R wave incl. the one at the curve's start)
        pair_err = np.array([circ_dist(ecg_phase[a], ecg_phase[b]) for a, b in res.pairs])
        lines.append(
            f"| {method} | {res.period_frames:.2f} | {100 * (res.period_frames / 28.5 - 1):+.1f} % | "
            f"{', '.join(f'{b:.1f}' for b in beats)} | {', '.join(f'{o:+.1f}' for o in offs)} | "
            f"{np.median(pe):.3f} / {np.percentile(pe, 90):.3f} | "
            f"{np.median(pair_err):.3f} / {np.percentile(pair_err, 90):.3f} | {res.confidence:.2f} |"
        )
    bip = DATA / "xa" / "rubo-biplane-b-ecg-17f.dcm"
    if bip.exists():
        c2 = load_cine(bip)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r2 = sync.synchronize_cine(c2)
        lines += ["", f"Biplane cine (17 frames, {c2.frame_time_ms:g} ms, blank frame 0): ECG R waves "
                  f"{', '.join(f'{b:.1f}' for b in r2.ecg.beat_frames)}, period {r2.period_frames:.1f} frames "
                  f"({r2.heart_rate_bpm:.0f} bpm) from the ECG; image-based estimate: "
                  + ("no periodicity found (about 1.5 beats)" if not r2.image.periodic
                     else f"period {r2.image.period_frames:.1f} frames")
                  + f", confidence {r2.image.confidence:.2f}."]
    st = DATA / "xa" / "ge-static-phantom-jpegls.dcm"
    if st.exists():
        c3 = load_cine(st)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r3 = sync.synchronize_cine(c3)
            r3p = sync.synchronize_cine(c3, method="paper")
        lines += ["", f"Static GE phantom (16 frames): default confidence {r3.confidence:.2f}, paper "
                  f"{r3p.confidence:.2f}; periodic = {r3.periodic} / {r3p.periodic}; period reported: "
                  f"{r3.period_frames} / {r3p.period_frames} (JSON null); warnings: "
                  + "; ".join(r3.warnings) + "."]
    # figure of the RCA result
    sync.plot_sync(ecg_res, IMAGES / "sync_rca.png", overwrite=True, title="RCA cine (rubo-rca-ecg-96f)")
    return lines


def error_figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CACIdentifierLib.fileutil import atomic_output

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['group']}\n{r['label']}" for r in rows]
    x = np.arange(len(rows))
    for off, method, color in ((-0.18, "default", "tab:purple"), (0.18, "paper", "tab:orange")):
        med = [np.median(r[method]["errors"]) for r in rows]
        p90 = [np.percentile(r[method]["errors"], 90) for r in rows]
        ax.bar(x + off, p90, width=0.34, color=color, alpha=0.35)
        ax.bar(x + off, med, width=0.34, color=color, label=f"{method} (dark: median, light: p90)")
    ax.axhline(0.03, color="k", lw=0.8, ls="--")
    ax.axhline(0.08, color="k", lw=0.8, ls=":")
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.set_ylabel("pair phase error (cycles)")
    ax.set_title("pair phase error per phantom case (dashed 0.03, dotted 0.08 cycle)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def phantom_figure(path):
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    acq = generate_acquisition(PhantomParams(rows=512, cols=512, n_frames=200, heart_rate_bpm_range=(72, 72)),
                               seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sync.synchronize(acq.frames, acq.frame_time_ms)
    # the phantom's true R waves as the "ECG" lane of the picture
    res.ecg = sync.PhaseEstimate("phantom truth", np.asarray(acq.truth["phase"]), None,
                                 [float(x) for x in acq.truth["r_wave_frames"]], [], 1.0, True)
    sync.plot_sync(res, path, overwrite=True, title="phantom 512x512, 72 bpm (green: true R waves and phase)")


def write_doc(block: list[str]) -> None:
    from CACIdentifierLib.fileutil import atomic_output

    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{DOC} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with atomic_output(DOC, overwrite=True) as tmp:
        tmp.write_text(head + BEGIN + "\n" + "\n".join(block) + "\n" + END + tail)


def machine() -> str:
    """The CPU this ran on, as /proc/cpuinfo names it (the model changes between machines)."""
    import os

    name = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{os.cpu_count()}-core {name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every 4th case only; do not touch docs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = run_phantoms(args.quick)
    block = ["### Phantoms", ""] + phantom_tables(rows)
    block += ["", "### Real cines with an ECG", ""] + (ecg_tables() if not args.quick else ["(skipped)"])
    worse = [r for r in rows if np.median(r["default"]["errors"]) > np.median(r["paper"]["errors"]) + 1e-9]
    block += ["", f"Default worse than paper (median pair error) in {len(worse)} of {len(rows)} phantom cases.",
              f"Evaluation run time: {time.perf_counter() - t0:.0f} s on this machine ({machine()})."]
    print("\n".join(block))
    if not args.quick:
        IMAGES.mkdir(parents=True, exist_ok=True)
        error_figure(rows, IMAGES / "sync_eval.png")
        phantom_figure(IMAGES / "sync_phantom.png")
        write_doc(block)


if __name__ == "__main__":
    main()
