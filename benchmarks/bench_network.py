"""Forward time of the double-head ResUNet-18 on this CPU: fp32 vs bf16 autocast.

Measures, in one run, per-frame seconds (one frame = 5 patch pairs) for
- the classifier alone (Step 1) and classifier + decoder (Steps 1-2),
- one frame (5 pairs) and a batch of 8 frames (40 pairs),
- fp32 and bf16 autocast (only where the CPU has native bf16), channels_last,
and prints the bf16/fp32 time ratio and the agreement of the probabilities
(max |p_bf16 - p_fp32| for the classifier and the ROI map).  Weights are
random (kaiming init, BN statistics perturbed), so only timings and
agreement are meaningful.  Product target: <= 0.10 s per frame for the whole
per-frame work on 2 CPU cores.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CACIdentifier"))

from CACIdentifierLib.device import cpu_supports_bf16  # noqa: E402
from CACIdentifierLib.network import ResUNet18, count_flops, count_parameters  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    from script_entry import options

    options(__doc__)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResUNet18().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    model = model.to(memory_format=torch.channels_last)
    f = count_flops(model)
    print(f"parameters {count_parameters(model) / 1e6:.2f} M; GFLOPs per patch pair: classifier "
          f"{2 * f['classifier_macs'] / 1e9:.2f}, decoder {2 * f['decoder_macs'] / 1e9:.2f}")
    bf16 = cpu_supports_bf16()
    print(f"threads {torch.get_num_threads()}, native bf16: {bf16}")
    for frames in (1, 8):
        n = 5 * frames
        x = torch.rand(n, 1, 256, 256).contiguous(memory_format=torch.channels_last)
        y = torch.rand(n, 1, 256, 256).contiguous(memory_format=torch.channels_last)
        results = {}
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            ctx = lambda p=precision: torch.autocast("cpu", dtype=torch.bfloat16, enabled=(p == "bf16"))  # noqa: E731
            with torch.inference_mode(), ctx():
                t_cls = timed(lambda x=x, y=y: model.classify(x, y), 3 if frames == 1 else 1)
                t_all = timed(lambda x=x, y=y: model(x, y), 3 if frames == 1 else 1)
                cls, roi = model(x, y)
            results[precision] = (t_cls / frames, t_all / frames, torch.sigmoid(cls.float()), torch.sigmoid(roi.float()))
            print(f"{frames} frame(s) ({n} pairs) {precision}: classifier {t_cls / frames:.3f} s/frame, "
                  f"classifier+decoder {t_all / frames:.3f} s/frame")
        if bf16:
            a, b = results["fp32"], results["bf16"]
            print(f"  bf16/fp32 time ratio: classifier {b[0] / a[0]:.2f}, classifier+decoder {b[1] / a[1]:.2f}; "
                  f"max |p_bf16 - p_fp32|: classifier {(a[2] - b[2]).abs().max():.4f}, "
                  f"ROI {(a[3] - b[3]).abs().max():.4f}")
    if bf16:
        whole_frame(model)
    return 0


def whole_frame(model) -> None:
    """The whole per-frame work in bf16 with gating, for 0, 1, 2 and 5 positive patches.

    Normalisation and patch extraction of both frames, classifier on 5 pairs,
    decoder on the positive patches only, stitching and refinement.
    """
    import numpy as np
    from CACIdentifierLib.patches import extract_patches, normalize_frame, stitch
    from CACIdentifierLib.refinement import refine

    rng = np.random.default_rng(0)
    f_nc = rng.integers(0, 4096, (512, 512)).astype(np.uint16)
    f_c = rng.integers(0, 4096, (512, 512)).astype(np.uint16)

    def run(n_pos: int) -> None:
        nc = torch.from_numpy(extract_patches(normalize_frame(f_nc))[:, None]).contiguous(
            memory_format=torch.channels_last)
        c = torch.from_numpy(extract_patches(normalize_frame(f_c))[:, None]).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.encode(nc, c)
            model.classify_features(feats)
            roi = np.zeros((5, 256, 256), np.float32)
            if n_pos:
                sub = {k: v[:n_pos] for k, v in feats.items()}
                roi[:n_pos] = torch.sigmoid(model.decode(sub).float())[:, 0].numpy()
        if n_pos:
            refine(stitch(roi))

    times = []
    for n_pos in (0, 1, 2, 5):
        times.append(timed(lambda n=n_pos: run(n), 3))
    print("whole per-frame work, bf16, gated decoder (0/1/2/5 positive patches): "
          + ", ".join(f"{t:.3f}" for t in times) + " s/frame (target 0.10)")


if __name__ == "__main__":
    from script_entry import run  # a CacError is one line and exit 2, as in `cac`

    raise SystemExit(run(main))
