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
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


@pytest.mark.parametrize("name", ["separability", "score_variants", "compare_models", "residual_contrast",
                                  "ensemble_gain", "pool_spread", "position_auc", "pairing_value",
                                  "vessel_alignment"])
def test_benchmark_docstring_examples(name):
    from benchmark_scripts import load

    result = doctest.testmod(load(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"benchmarks/{name}.py has no examples"
    assert result.failed == 0
