"""The examples in the docstrings of losslab.forecast.scaling run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["", "_data", "_fit", "chinchilla", "compare", "gadre", "henighan", "kaplan", "loss_to_loss", "protocol", "rl"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("losslab.forecast.scaling" + (f".{name}" if name else ""))
    import numpy as np

    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
