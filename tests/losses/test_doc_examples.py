"""The examples in the docstrings run and print what they claim (they are hand-computed tiny cases)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["losslab.losses", "losslab.losses.classification", "losslab.losses.poly", "losslab.losses.spherical",
           "losslab.losses.robust", "losslab.losses.llm", "losslab.losses.metric", "losslab.losses.stochastic",
           "losslab.losses.modules", "losslab.losses.imbalance", "losslab.losses.distillation",
           "losslab.losses.distillation_divergences",
           "losslab.losses.ranking", "losslab.losses.regression", "losslab.losses.forecasting",
           "losslab.losses.histogram", "losslab.losses.regression_classification", "losslab.losses.conformal",
           "losslab.losses.imbalanced_regression", "losslab.losses.overlap", "losslab.losses.adversarial",
           "losslab.losses.self_distillation", "losslab.losses.feature_distillation",
           "losslab.losses.multi_token", "losslab.losses.censored_aggregate",
           "losslab.losses.cascade_ranking", "losslab.losses.modules_extra", "losslab.losses.auc",
           "losslab.losses.legendretron"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
