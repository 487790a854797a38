"""Calibrated frame probabilities: temperature scaling, Platt scaling and reliability diagrams.

A classifier trained on balanced batches is not calibrated: its 0.9 need not
mean nine in ten.  Temperature scaling (Guo et al., ICML 2017) divides the logit
by one number ``T`` fitted on held-out data by minimising the negative
log-likelihood; it changes no decision ranking (AUC is unchanged) and makes
``p`` read as a frequency.  Platt scaling (:func:`fit_platt`) also fits a bias
``b``, ``p = sigmoid(logit / T + b)``: balanced training batches teach the
classifier a 50 % prior, and ``b`` moves it to the prevalence of held-out data,
so that ``p >= 0.5`` is the Bayes decision there.  The model card stores ``T``
(and ``b``) under ``calibration`` with the reliability figures before and after;
:func:`CACIdentifierLib.inference.identify` and
:func:`CACTrainerLib.evaluation.evaluate` apply them (:func:`apply`).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.random(4000) < 0.5
>>> logit = 3.0 * np.where(y, 1.0, -1.0) + rng.normal(0, 3.0, 4000)
>>> t = fit_temperature(logit, y)    # the true posterior logit is logit / 1.5
>>> 1.3 < t < 1.7, expected_calibration_error(1 / (1 + np.exp(-logit / t)), y) < 0.03
(True, True)
"""

from __future__ import annotations

import numpy as np


def _nll(logit: np.ndarray, y: np.ndarray, t: float, b: float = 0.0) -> float:
    z = logit / t + b
    # log(1 + exp(-|z|)) form: stable for large logits.
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(logits, labels, *, bounds=(0.05, 20.0)) -> float:
    """The temperature ``T`` minimising the NLL of ``sigmoid(logits / T)`` (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    logit = np.asarray(logits, float).reshape(-1)
    y = np.asarray(labels, float).reshape(-1)
    if logit.size == 0 or y.min() == y.max():
        return 1.0
    res = minimize_scalar(lambda t: _nll(logit, y, t), bounds=bounds, method="bounded")
    return float(res.x)


def fit_platt(logits, labels, *, temperature_bounds=(0.05, 20.0), bias_bounds=(-20.0, 20.0)) -> tuple[float, float]:
    """Temperature ``T`` and bias ``b`` minimising the NLL of ``sigmoid(logits / T + b)``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = rng.random(6000) < 0.2                     # 20 % prevalence
    >>> logit = 2.0 * np.where(y, 1.0, -1.0) + rng.normal(0, 2.0, 6000)
    >>> t, b = fit_platt(logit, y)                     # true posterior: logit + log(0.2 / 0.8)
    >>> bool(abs(t - 1.0) < 0.15), bool(abs(b - np.log(0.25)) < 0.2)
    (True, True)
    """
    from scipy.optimize import minimize

    logit = np.asarray(logits, float).reshape(-1)
    y = np.asarray(labels, float).reshape(-1)
    if logit.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    # Optimise 1/T (the slope): the NLL is convex in (1/T, b).
    res = minimize(lambda v: _nll(logit, y, 1.0 / v[0], v[1]), x0=[1.0, 0.0], method="L-BFGS-B",
                   bounds=[(1.0 / temperature_bounds[1], 1.0 / temperature_bounds[0]), bias_bounds])
    return float(1.0 / res.x[0]), float(res.x[1])


def apply(probs, calibration: dict | None) -> np.ndarray:
    """``probs`` (uncalibrated sigmoid outputs) through a model card's ``calibration`` (None: unchanged).

    >>> apply(np.array([0.5, 0.9]), {"temperature": 1.0, "bias": -1.0}).round(3).tolist()
    [0.269, 0.768]
    """
    p = np.asarray(probs, float)
    if not calibration:
        return p
    t = float(calibration.get("temperature", 1.0))
    b = float(calibration.get("bias", 0.0))
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) / t + b)))


def carry_threshold(threshold: float, old: dict | None, new: dict | None) -> float:
    """The threshold on ``new``'s calibrated scale that makes the decisions ``threshold`` made under ``old``.

    Both calibrations are increasing maps of the same raw logit, so a threshold
    carries over exactly: ``apply(p, new) >= carried`` where ``apply(p, old) >= threshold``.
    Used when a model with an operating point is calibrated again.

    >>> old, p = {"temperature": 2.0, "bias": -1.0}, np.array([0.05, 0.2, 0.4, 0.6, 0.9])
    >>> t = carry_threshold(0.3, old, None)
    >>> round(t, 3), (apply(p, old) >= 0.3).tolist() == (p >= t).tolist()
    (0.576, True)
    """
    if not 0.0 < threshold < 1.0:
        return float(threshold)
    old, new = old or {}, new or {}
    raw = (np.log(threshold / (1.0 - threshold)) - float(old.get("bias", 0.0))) * float(old.get("temperature", 1.0))
    return float(1.0 / (1.0 + np.exp(-(raw / float(new.get("temperature", 1.0)) + float(new.get("bias", 0.0))))))


def reliability(probs, labels, bins: int = 10) -> dict:
    """Reliability diagram data: per equal-width bin the mean probability, the observed frequency and
    the count, and the expected calibration error (ECE, count-weighted mean gap)."""
    p = np.asarray(probs, float).reshape(-1)
    y = np.asarray(labels, float).reshape(-1)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
                     "mean_p": float(p[sel].mean()) if n else None,
                     "frequency": float(y[sel].mean()) if n else None})
    return {"bins": rows, "ece": expected_calibration_error(p, y, bins)}


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """Count-weighted mean of |mean probability - observed frequency| over equal-width bins."""
    p = np.asarray(probs, float).reshape(-1)
    y = np.asarray(labels, float).reshape(-1)
    if p.size == 0:
        return float("nan")
    idx = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            gap += sel.sum() * abs(p[sel].mean() - y[sel].mean())
    return float(gap / p.size)


def plot_reliability(before: dict, after: dict, path, title: str = "") -> None:
    """Reliability diagram (before and after temperature scaling) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
    for data, name, col in ((before, "raw", "tab:red"), (after, "calibrated", "tab:blue")):
        pts = [(b["mean_p"], b["frequency"]) for b in data["bins"] if b["n"]]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "-o", color=col, ms=4, label=f"{name} (ECE {data['ece']:.3f})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    from .fileutil import atomic_output

    with atomic_output(path, overwrite=True) as tmp:  # the caller checked the name; no half-written PNG
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
