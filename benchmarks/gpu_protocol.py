"""GPU protocol: both recipes on one fold of fresh phantom patients, evaluated, in one short run.

For a lent GPU (issue 12, item 8), and testable on the CPU with ``--tiny``::

    python benchmarks/gpu_protocol.py --out OUT [--tiny] [--minutes 7]

1. Pools of domain-randomised phantom patients (``phantom_pool``), generated on all
   cores: training, validation (checkpoint choice, calibration) and a held-out test
   fold of new patients, a share of them calcium-free.
2. The ``default`` recipe and the ``paper`` recipe, each given the same wall-clock
   share of the budget: a probe of a few steps measures the step time, the epochs
   are chosen to fill the share (the default recipe's learning-rate schedule then
   ends where the budget does).
3. Both models evaluated on the test fold as inference does it (gated, stitched,
   refined, outside the exposed field removed): patch F1 and AUC, per cine the
   median IoM, HD, ROI area (% of the exposed field), ROI precision, and the share
   of frames with any ROI on calcium-free cines; Wilcoxon over cines.
4. ``cac identify`` throughput on the device (frames/s, 200-frame cine).

Ablations at the same budget: ``--recipes default,paper,default:noaux --set
default:noaux.aux_weight=0`` trains a variant ``RECIPE:TAG`` of a recipe with its own
overrides (``--set default:stream.refresh_patients=40``: new patients every epoch, their
generation counted in the budget; ``--set 'default:full.architecture={"block1_pool": false}'``:
the network without Block1's max-pool); every run is compared with the paper recipe and each ``default:TAG`` with
the default (Wilcoxon over the test cines).  On a CPU the same script is the
equal-budget protocol (``--minutes 118`` on 2 cores, docs/learning.md).

Writes ``OUT/gpu_protocol.json`` (all figures), ``OUT/gpu_protocol.md`` (the table),
``OUT/default.safetensors`` + card and ``OUT/default_curves.png``.  Prints progress
lines as it goes, so a run cut by a time limit still shows how far it came.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for sub in ("CACIdentifier", "CACTrainer"):
    sys.path.insert(0, str(HERE.parent / sub))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def per_cine(ev: dict, fs) -> dict:
    """Per-acquisition medians of the frame measures of ``evaluation.evaluate``."""
    from CACIdentifierLib.metrics import median_iqr

    out: dict = {}
    acq = np.array(fs.acquisition, dtype=object)
    truth_any = np.asarray(ev["frame_truth_any"], bool)
    pred_any = np.asarray(ev["frame_pred_any"], bool)
    area = np.asarray(ev["frame_area_pct_field"], float)
    for a in sorted(set(fs.acquisition)):
        sel = acq == a
        rows = [f for f in ev["frames"] if f["acquisition"] == a]
        free = not truth_any[sel].any()
        out[a] = {
            "calcium_free": bool(free),
            "iom": median_iqr([f["iom"] for f in rows])["median"],
            "hd_mm": median_iqr([f["hd_mm"] for f in rows])["median"],
            "roi_precision": median_iqr([f["roi_precision"] for f in rows])["median"],
            "roi_area_pct_field": float(np.median(area[sel])),
            "frames_with_roi_pct": float(100.0 * pred_any[sel].mean()),
            # Share of the frames with calcium that get an ROI (None on a calcium-free cine).
            "frame_sensitivity": None if free else float((pred_any & truth_any)[sel].sum() / truth_any[sel].sum()),
        }
    return out


def compare_cines(a: dict, b: dict) -> dict:
    """Wilcoxon signed-rank over the test cines, run ``a`` against run ``b`` (per-cine medians of ``per_cine``).

    IoM, ROI precision and HD over the calcified cines; ROI area over all cines; the share of frames
    with an ROI over the calcium-free cines.
    """
    from CACIdentifierLib.metrics import wilcoxon

    keys = sorted(set(a) & set(b))
    calc = [k for k in keys if not a[k]["calcium_free"]]
    free = [k for k in keys if a[k]["calcium_free"]]
    out = {}
    for key, cines in (("iom", calc), ("roi_precision", calc), ("hd_mm", calc), ("roi_area_pct_field", keys),
                       ("frames_with_roi_pct", free)):
        pairs = [(a[k][key], b[k][key]) for k in cines if a[k][key] is not None and b[k][key] is not None]
        out[key] = wilcoxon([x for x, _ in pairs], [y for _, y in pairs]) if pairs else None
    return out


def summarize(ev: dict, cines: dict) -> dict:
    from CACIdentifierLib.metrics import median_iqr

    calc = [c for c in cines.values() if not c["calcium_free"]]
    free = [c for c in cines.values() if c["calcium_free"]]

    def m(rows, key):
        return median_iqr([r[key] for r in rows])

    return {
        "patch_f1": ev.get("f1"), "patch_precision": ev.get("precision"), "patch_recall": ev.get("recall"),
        "patch_auc": ev.get("auc"), "patch_auc_within_position": ev.get("auc_within_position"),
        "iom": m(calc, "iom"), "hd_mm": m(calc, "hd_mm"), "roi_precision": m(calc, "roi_precision"),
        "roi_area_pct_field": m(list(cines.values()), "roi_area_pct_field"),
        "calcium_free_frames_with_roi_pct": m(free, "frames_with_roi_pct"),
        "frame_detection": ev.get("detection"),
        # Frame sensitivity with every patch gated in: what no classifier threshold can exceed.
        "decoder_sensitivity": ev.get("decoder_sensitivity"),
        "cines": len(cines), "calcium_free_cines": len(free),
    }


def probe_seconds(fs, val, config, device, steps: int) -> dict:
    """Measured costs of ``config`` on this device: seconds per stage-1 and stage-2 optimiser step
    (median after a warm-up step), per BN recalibration and per validation pass of each stage.

    Both stages, the BN recalibrations and the validations are timed because their ratios differ
    between devices: on the 2-core CPU a stage-2 epoch cost about twice the fixed estimate tuned on
    the H200, which gave one recipe more wall time than the other.
    """
    import torch
    from CACIdentifierLib.network import ResUNet18
    from CACTrainerLib import evaluation, training

    cfg = replace(config, epochs1=1, epochs2=1, samples_per_epoch=config.batch_size * (steps + 2),
                  hard_negative_frac=0.0)
    model = ResUNet18(**cfg.architecture).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step_seconds(stage, params):
        opt = torch.optim.Adam(params, lr=1e-4)
        t = [time.perf_counter()]

        def progress(done, total, msg):
            sync()
            t.append(time.perf_counter())

        training._run_epoch(model, opt, fs, cfg, device, stage, 0, progress)
        dt = np.diff(t)[2:]  # skip the first steps (warm-up, worker start)
        return float(np.median(dt)) if len(dt) else float(t[-1] - t[0])

    def seconds(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    # Per epoch besides the steps: BN recalibration, then validation (stage 2: IoM scoring and decoder loss).
    out = {"step1": step_seconds(1, model.classifier_parameters()
                                 + (model.decoder_parameters() if cfg.aux_weight > 0 else [])),
           "recalibrate1": seconds(lambda: training.recalibrate_bn(model, fs, cfg, device, 1, 0)),
           "validate1": seconds(lambda: evaluation.evaluate(model, val, cfg, device, decode=False))}
    model.freeze_classifier(True)
    out["step2"] = step_seconds(2, model.decoder_parameters())
    out["recalibrate2"] = seconds(lambda: training.recalibrate_bn(model, fs, cfg, device, 2, 0))
    out["validate2"] = (seconds(lambda: evaluation.evaluate(model, val, cfg, device, decode=True))
                        + seconds(lambda: training._decoder_val_loss(model, val, cfg, device, 1.0)))
    return out


def overrides(cfg, pairs: dict) -> dict:
    """``--set RECIPE.FIELD=VALUE`` values converted to the type of the TrainConfig field."""
    out = {}
    for key, text in pairs.items():
        if not hasattr(cfg, key):
            raise SystemExit(f"gpu_protocol: TrainConfig has no field {key!r}")
        current = getattr(cfg, key)
        if isinstance(current, dict):  # architecture: a JSON object merged into the recipe's
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise SystemExit(f"gpu_protocol: --set {key}: give a JSON object, e.g. '{{\"block1_pool\": false}}'")
            out[key] = {**current, **value}
        elif isinstance(current, bool) or (current is None and text.lower() in ("true", "false", "yes", "no")):
            out[key] = text.lower() in ("1", "true", "yes")  # bool, or "auto" (None) set either way
        elif current is None:
            raise SystemExit(f"gpu_protocol: --set {key}: give true or false")
        else:
            out[key] = type(current)(text)
    return out


def train_recipe(name, train, val, seconds, out_dir, device, args, emit):
    from CACTrainerLib import training
    from CACTrainerLib.recipes import recipe_config

    # "RECIPE:TAG" is a variant of RECIPE: its own --set overrides, its own run (one choice ablated).
    recipe = name.partition(":")[0]
    cfg = recipe_config(recipe, seed=args.seed, device=args.device, workers=args.workers,
                        architecture=args.arch)
    cfg = replace(cfg, **overrides(cfg, args.set.get(name, {})))
    cost = probe_seconds(train, val, cfg, device, 8 if not args.tiny else 2)
    step = cost["step1"]
    steps_epoch = training.steps_per_epoch(train, cfg)
    steps_epoch2 = training.steps_per_epoch(train, cfg, stage=2)  # fewer with decoder_patches="positive"
    stream = None
    if cfg.refresh_patients > 0:
        from CACTrainerLib.phantom_pool import PatientStream

        # The pool's own patients start the window; new ones follow them, generated between epochs.
        stream = PatientStream(range(args.train), cfg.refresh_patients, next_patient=args.train,
                               seed=1000 + args.seed, workers=os.cpu_count(), **args.pool_kw)
        stream.preload(train)
        cost["generate"] = cfg.refresh_patients * args.seconds_per_patient
    # Stage 2 gets at most 3 epochs, stage 1 the rest.
    stage2_epoch = cost["step2"] * steps_epoch2 + cost["recalibrate2"] + cost["validate2"] + cost.get("generate", 0)
    n2 = max(1, min(3, int(0.3 * seconds / stage2_epoch)))
    stage1_epoch = step * steps_epoch + cost["recalibrate1"] + cost["validate1"] + cost.get("generate", 0)
    n1 = max(1, int((seconds - n2 * stage2_epoch) / stage1_epoch))
    cfg = replace(cfg, epochs1=n1, epochs2=n2)
    if recipe == "paper":
        # The paper's rebalance schedule compressed to the epochs that fit (0.01 x 100 epochs).
        cfg = replace(cfg, rebalance_step=min(0.5, 1.0 / max(n2, 1)))
    log(f"{name}: {step * 1000:.1f} ms/step (stage 2: {cost['step2'] * 1000:.1f}), validation "
        f"{cost['validate1']:.1f}/{cost['validate2']:.1f} s, {steps_epoch} steps/epoch -> epochs {n1} + {n2}")
    t0 = time.perf_counter()
    result = training.train(train, val, cfg, Path(args.work) / f"run_{name}", emit=emit, stream=stream)
    log(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
    return result, cfg, {"ms_per_step": step * 1000, "ms_per_step2": cost["step2"] * 1000,
                         "probe": cost, "budget_seconds": seconds, "steps_per_epoch": steps_epoch,
                         "samples_per_s": cfg.batch_size / step, "train_seconds": result.seconds}


def fit_calibration(model, val, cfg, device) -> tuple[dict | None, dict | None]:
    """Platt scaling and activation statistics fitted on the validation pool, as ``cac calibrate`` fits them.

    Returns ``(calibration, feature_statistics)`` for the model card; ``(None, None)`` when the
    pool cannot calibrate (fewer than 4 frames, or one class of patches only: tiny runs).
    """
    from CACIdentifierLib.errors import CacError
    from CACTrainerLib.calibrate import calibrate_metadata

    try:
        meta, _ = calibrate_metadata(model, {}, val, method="platt", device=device, data="validation pool",
                                     batch_size=cfg.batch_size)
    except CacError as exc:
        log(f"no calibration: {exc}")
        return None, None
    return meta["calibration"], meta["feature_statistics"]


def identify_throughput(model, metadata, device_name: str, tiny: bool) -> dict:
    from CACIdentifierLib.inference import identify
    from CACTrainerLib.phantom import PhantomParams, generate_acquisition

    p = PhantomParams(n_frames=40 if tiny else 200, rows=128 if tiny else 512, cols=128 if tiny else 512)
    cine = generate_acquisition(p, seed=77, patient=0).to_cine()
    batch = 8 if device_name == "cuda" else 1
    identify(cine, model, metadata, device=device_name, batch_frames=batch)  # warm-up
    t0 = time.perf_counter()
    res = identify(cine, model, metadata, device=device_name, batch_frames=batch)
    wall = time.perf_counter() - t0
    n = len(res.frames)
    return {"frames": n, "seconds": wall, "frames_per_s": n / wall,
            "network_frames_per_s": n / max(res.timings["network"], 1e-9), "batch_frames": batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU test: tiny pools and network")
    ap.add_argument("--minutes", type=float, default=7.0, help="whole budget (pools, both recipes, evaluation)")
    ap.add_argument("--train", type=int, default=600, help="training patients")
    ap.add_argument("--val", type=int, default=12)
    ap.add_argument("--work", default=None, help="folder for the runs' checkpoints (default OUT)")
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 2)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipes", default="default,paper", help="comma-separated recipes to run")
    ap.add_argument("--set", action="append", default=[], metavar="RECIPE.FIELD=VALUE",
                    help="override a TrainConfig field of one recipe, e.g. default.lr1=3e-4 (repeatable)")
    args = ap.parse_args(argv)
    sets: dict = {}
    for item in args.set:
        name, _, rest = item.partition(".")
        key, _, value = rest.partition("=")
        if not (name and key and value):
            raise SystemExit(f"gpu_protocol: --set {item!r} is not RECIPE.FIELD=VALUE")
        sets.setdefault(name, {})[key] = value
    args.set = sets

    import torch
    from CACIdentifierLib.allocator import keep_freed_memory
    from CACIdentifierLib.device import choose_device
    from CACIdentifierLib.modelio import save_model
    from CACTrainerLib import evaluation, training
    from CACTrainerLib.phantom_pool import phantom_pool

    keep_freed_memory()  # as `cac` does: reuse freed blocks (docs/learning.md, Speed)

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = choose_device(args.device)
    cores = os.cpu_count() or 1
    if args.workers is None:
        args.workers = max(0, min(12, cores - 2)) if device.type == "cuda" else 0
    args.arch = {"width": 8} if args.tiny else {}
    args.work = args.work or str(out)
    if args.tiny:
        args.train, args.val, args.test = min(args.train, 6), min(args.val, 2), min(args.test, 3)
    facts = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
             "cores": cores, "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
             "args": {k: v for k, v in vars(args).items()}}
    log(f"start {facts}")
    results: dict = {"facts": facts}

    def save():
        (out / "gpu_protocol.json").write_text(json.dumps(results, indent=1, default=float) + "\n")

    args.pool_kw = dict(n_frames=32 if args.tiny else 64, frames_per_acquisition=2 if args.tiny else 6,
                        size=128 if args.tiny else None)
    kw = dict(args.pool_kw, workers=cores)
    t0 = time.perf_counter()
    train = phantom_pool(args.train, seed=1000 + args.seed, **kw)
    args.seconds_per_patient = (time.perf_counter() - t0) / max(args.train, 1)  # wall, all cores
    val = phantom_pool(args.val, seed=2000 + args.seed, **kw)
    test = phantom_pool(args.test, seed=3000 + args.seed, calcium_free_fraction=0.4, **kw)
    results["pools"] = {"seconds": time.perf_counter() - t0, "train": train.summary(), "val": val.summary(),
                        "test": test.summary()}
    log(f"pools {results['pools']}")
    save()

    budget = args.minutes * 60 - (time.perf_counter() - t_start)
    names = [n for n in args.recipes.split(",") if n]
    share = {n: 0.9 / len(names) for n in names}  # the same wall-clock for each; the rest: evaluation, identify
    emit_rows = []

    def emit(e):
        if e.get("event") == "epoch":
            emit_rows.append(e)
            log(f"  stage {e['stage']} epoch {e['epoch']}/{e['epochs']} loss {e['train_loss']:.4f} "
                f"val_f1 {e.get('val_f1')} val_iom {e.get('val_iom')} {e['seconds']:.0f}s")

    models = {}
    for name in names:
        try:
            result, cfg, speed = train_recipe(name, train, val, budget * share[name] * (0.05 if args.tiny else 1),
                                              out, device, args, emit)
        except Exception as exc:  # keep what the other recipe gives
            log(f"{name} failed: {exc!r}")
            results[name] = {"error": repr(exc)}
            save()
            continue
        ev = evaluation.evaluate(result.model.to(device), test, cfg, device)
        cines = per_cine(ev, test)
        # The same model with Platt scaling fitted on the validation pool (the decision p >= 0.5
        # then uses the validation prevalence instead of the balanced batches' 50 %).
        cal, feature_stats = fit_calibration(result.model, val, cfg, device)
        ev_cal = evaluation.evaluate(result.model, test, cfg, device, calibration=cal)
        cines_cal = per_cine(ev_cal, test)
        results[name] = {"speed": speed, "config": training.asdict(cfg), "test": summarize(ev, cines),
                         "cines": cines, "history": result.history, "calibration": cal,
                         "test_calibrated": summarize(ev_cal, cines_cal), "cines_calibrated": cines_cal}
        log(f"{name} calibration {cal}; calibrated test: "
            f"{json.dumps(results[name]['test_calibrated'], default=float)}")
        models[name] = (result, cfg)
        log(f"{name} test: {json.dumps(results[name]['test'], default=float)}")
        if name == "default":
            meta = {**training.inference_metadata(cfg),
                    "training": {"data": {"phantom_pool": {"train": train.summary(), "val": val.summary(),
                                                           "seeds": [1000 + args.seed, 2000 + args.seed]}},
                                 "command": "python benchmarks/gpu_protocol.py " + " ".join(sys.argv[1:]),
                                 "config": training.asdict(cfg), "machine": facts,
                                 "seconds": round(result.seconds, 1), "torch": torch.__version__},
                    "metrics": {"test": results[name]["test"]}}
            if cal is not None:  # Platt scaling and activation statistics of the validation pool (ood.py)
                meta["calibration"], meta["feature_statistics"] = cal, feature_stats
            save_model(out / "default.safetensors", result.model.cpu(), meta, overwrite=True, dtype=torch.float16)
            training.plot_curves(result.history, out / "default_curves.png", title="default recipe (GPU protocol)")
            result.model.to(device)
        save()

    # Paired over the same test cines: every run against the paper recipe, and each variant of the
    # default recipe against the default (what its one ablated choice is worth).
    comparisons = [(n, "paper") for n in models if n != "paper"]
    comparisons += [(n, "default") for n in models if n.startswith("default:") and "default" in models]
    if comparisons:
        results["wilcoxon"] = {f"{a} vs {b}": compare_cines(results[a]["cines"], results[b]["cines"])
                               for a, b in comparisons if b in models}
        save()
    if "default" in models:
        from CACIdentifierLib.modelio import load_model

        model, metadata = load_model(out / "default.safetensors")
        try:
            results["identify"] = identify_throughput(model, metadata, device.type, args.tiny)
            log(f"identify {results['identify']}")
        except Exception as exc:
            results["identify"] = {"error": repr(exc)}
    results["seconds"] = time.perf_counter() - t_start
    save()
    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("patch_f1", "patch_auc", "iom", "hd_mm", "roi_precision", "roi_area_pct_field",
                "calcium_free_frames_with_roi_pct"):
        row = [key]
        for name in names:
            v = (results.get(name) or {}).get("test", {}).get(key)
            if isinstance(v, dict):
                row.append("n/a" if v.get("median") is None else
                           f"{v['median']:.3g} ({v['q1']:.3g}-{v['q3']:.3g})")
            else:
                row.append("n/a" if v is None else f"{v:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    (out / "gpu_protocol.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"done in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
