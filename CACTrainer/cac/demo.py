"""The main job (``make demo``): a phantom study, identified with the shipped model, compared with its annotators.

1. ``cac phantom`` writes a small synthetic study (one patient, two projections) with
   calcium ground truth and three annotators;
2. ``cac identify`` runs synchronization and the double-head ResUNet-18 with the
   shipped default model on each cine, with the annotators' files for comparison;
3. the outputs (ROI segmentation, report, overlay picture) are listed.

Everything lands in ``demo-output/`` (replaced on each run; it is git-ignored).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .cli import main as cac


def run(out_dir: str = "demo-output", seed: int = 7) -> int:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dataset = out / "phantom"
    print(f"== 1/2 generating a phantom study in {dataset}", flush=True)
    rc = cac(["phantom", str(dataset), "--patients", "1", "--acquisitions-per-patient", "2", "--seed", str(seed),
              "--calcium-free-fraction", "0", "--calcium-contrast", "0.25", "--frames", "120"])
    if rc:
        return rc
    from CACTrainerLib.phantom_writer import load_manifest

    results = []
    for acq in load_manifest(dataset):
        target = out / "identify" / acq["id"]
        print(f"== 2/2 identifying CAC in {acq['cine']}", flush=True)
        rc = cac(["identify", str(acq["cine"]), "--out", str(target), "--annotations", *map(str, acq["annotators"])])
        if rc:
            return rc
        report = json.loads((target / "report.json").read_text())
        results.append((acq["id"], target, report))

    print("\nDone. Outputs:")
    for acq_id, target, report in results:
        s = report.get("summary", {})
        print(f"  {acq_id}: {target}/roi.seg.nrrd  {target}/report.json  {target}/overlay.png")
        if s:
            from CACIdentifierLib.report import summary_line

            print(f"      {summary_line(s)}; {report['timings']['seconds_per_frame']:.2f} s/frame")
    print("Open a cine and its roi.seg.nrrd in 3D Slicer (CACIdentifier module) to browse the ROIs frame by frame.")
    return 0


if __name__ == "__main__":
    sys.exit(run())
