"""Calibrate a trained model on held-out data: Platt or temperature scaling and activation statistics.

What ``cac calibrate`` does (issue 12, item 5).  On frames the model never
trained on (a dataset folder, or a pool of new phantom patients):

- the classifier's probabilities are calibrated (:mod:`CACIdentifierLib.calibration`):
  ``platt`` fits a temperature and a bias (the bias moves the balanced-batch
  prior to the data's prevalence, so it changes which frames get an ROI),
  ``temperature`` fits the temperature only (no decision changes), ``none``
  leaves them;
- the activation statistics of Block6 are stored for the out-of-distribution
  warning of ``cac identify`` (:mod:`CACIdentifierLib.ood`);
- the reliability diagram before and after goes into a PNG beside the model.

The weights are not changed; the result is a new model file with its card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METHODS = ("platt", "temperature", "none")


def calibrate_metadata(model, metadata: dict, fs, *, method: str = "platt", device="cpu", data: str = "",
                       batch_size: int = 32) -> tuple[dict, dict]:
    """New metadata with ``calibration`` and ``feature_statistics`` fitted on ``fs``; and the reliability data.

    Parameters
    ----------
    model : ResUNet18
    metadata : dict
        The model's metadata (a copy is returned).
    fs : FrameSet
        Held-out frames with patch labels.
    method : {"platt", "temperature", "none"}
    data : str
        What ``fs`` is, for the model card.

    Returns
    -------
    (metadata, reliability) : dict, dict
        ``reliability`` has ``before`` and ``after`` (:func:`calibration.reliability`).
    """
    import torch
    from CACIdentifierLib import calibration
    from CACIdentifierLib.errors import CacError
    from CACIdentifierLib.ood import feature_statistics

    from . import training

    if method not in METHODS:
        raise CacError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if len(fs) < 4:
        raise CacError(f"calibration needs at least 4 annotated frames, got {len(fs)}; give more data")
    device = torch.device(device)
    probs, _ = training.predict_patches(model, fs, device, False, batch_size)
    p = np.clip(probs.astype(float), 1e-6, 1 - 1e-6)
    y = fs.patch_labels > 0.5
    if method != "none" and (y.all() or not y.any()):
        raise CacError("the calibration data hold only one class of patches; add calcium-free and calcified runs")
    logit = np.log(p / (1 - p))
    meta = dict(metadata)
    cal = None
    if method == "platt":
        t, b = calibration.fit_platt(logit, y)
        cal = {"temperature": t, "bias": b}
    elif method == "temperature":
        cal = {"temperature": calibration.fit_temperature(logit, y), "bias": 0.0}
    before = calibration.reliability(p, y)
    after = calibration.reliability(calibration.apply(p, cal), y) if cal else before
    if cal:
        meta["calibration"] = dict(cal, method=method, data=str(data), patches=int(y.size),
                                   positive_patches=int(y.sum()), ece_before=before["ece"], ece_after=after["ece"])
    else:
        meta.pop("calibration", None)
    meta["feature_statistics"] = feature_statistics(
        training.pooled_features(model, fs, device, False, batch_size), data=str(data))
    return meta, {"before": before, "after": after}


def calibrate_file(model_path, out_path, fs, *, method: str = "platt", data: str = "", overwrite: bool = False,
                   device="cpu") -> dict:
    """Calibrate the model at ``model_path`` on ``fs`` and write it to ``out_path`` (+ card, reliability PNG)."""
    import torch
    from CACIdentifierLib import calibration
    from CACIdentifierLib.modelio import load_model, save_model

    model, meta = load_model(model_path)
    new_meta, rel = calibrate_metadata(model, meta, fs, method=method, device=device, data=data)
    dtype = torch.float16 if str(meta.get("weights_dtype", "")).endswith("16") else torch.float32
    card = save_model(out_path, model, new_meta, overwrite=overwrite, dtype=dtype)
    png = Path(out_path).with_suffix(".reliability.png")
    calibration.plot_reliability(rel["before"], rel["after"], png, title=f"{method} calibration: {data}")
    return {"card": card, "reliability": rel, "figure": str(png)}
