"""The Examples in the docstrings of the paper stages run and give what they show (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "CACIdentifierLib.sync.signal",
    "CACIdentifierLib.sync.phase",
    "CACIdentifierLib.patches",
    "CACIdentifierLib.refinement",
    "CACIdentifierLib.metrics",
    "CACIdentifierLib.network",
    "CACIdentifierLib.background",
    "CACIdentifierLib.calibration",
    "CACIdentifierLib.nrrd_io",
    "CACIdentifierLib.temporal",
    "CACIdentifierLib.seg_align",
    "CACIdentifierLib.fileutil",
    "CACTrainerLib.phantom_annotators",
    "CACTrainerLib.calibrate",
    "CACTrainerLib.training",
    "cac.train_events",
    "cac.cli_calibrate",
    "cac.cli_model",
    # Every other module with examples (found by grep for ">>> "; they were not run by the suite).
    "CACIdentifierLib.roi_gt",
    "CACIdentifierLib.resources",
    "CACIdentifierLib.field",
    "CACIdentifierLib.static_structures",
    "CACIdentifierLib.errors",
    "CACIdentifierLib.report",
    "CACIdentifierLib.logic",
    "CACIdentifierLib.worker",
    "CACIdentifierLib.cine",
    "CACIdentifierLib.modelio",
    "CACIdentifierLib.progress",
    "CACIdentifierLib.ood",
    "CACIdentifierLib.allocator",
    "CACIdentifierLib.sync.gram",
    "CACIdentifierLib.device",
    "CACTrainerLib.dataset",
    "CACTrainerLib.crossval",
    "CACTrainerLib.amp",
    "CACTrainerLib.phantom_pool",
    "CACTrainerLib.checkpoint_io",
    "CACTrainerLib.recipes",
    "CACTrainerLib.phantom_domain",
    "CACTrainerLib.phantom_imaging",
    "CACTrainerLib.dataset_builder",
    "CACTrainerLib.distributed",
    "CACTrainerLib.losses",
    "cac.cli_evaluate",
    "CACAnnotatorLib.annotation",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


@pytest.mark.parametrize("name", ["separability", "score_variants", "compare_models", "residual_contrast",
                                  "ensemble_gain", "pool_spread", "position_auc", "pairing_value",
                                  "vessel_alignment", "second_generator", "ab_patch_auc", "twin_figure",
                                  "sensitivity_holds", "frame_curves", "display_shift", "script_entry", "pool_cache",
                                  "replacement_rule"])
def test_benchmark_docstring_examples(name):
    from benchmark_scripts import load

    result = doctest.testmod(load(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"benchmarks/{name}.py has no examples"
    assert result.failed == 0


def test_every_module_with_examples_is_run():
    """A module whose docstrings show examples must be in MODULES: 25 were not, and one example had gone stale."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = set()
    for top in ("CACIdentifier", "CACTrainer", "CACAnnotator"):
        for path in (root / top).rglob("*.py"):
            lines = path.read_text(encoding="utf-8").splitlines()
            if any(re.match(r"\s*>>> ", line) and "doctest: +SKIP" not in line for line in lines):
                name = ".".join(path.relative_to(root / top).with_suffix("").parts)
                found.add(name.removesuffix(".__init__"))
    assert found, "no module with examples found: the search is broken"
    assert sorted(found - set(MODULES)) == []
    scripts = {p.stem for p in (root / "benchmarks").glob("*.py")
               if re.search(r"^\s*>>> ", p.read_text(encoding="utf-8"), re.MULTILINE)}
    listed = set(test_benchmark_docstring_examples.pytestmark[0].args[1])
    assert scripts and sorted(scripts - listed) == []
