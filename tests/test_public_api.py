"""Every public package has a sorted, complete ``__all__`` of documented symbols; light imports stay light."""

import importlib
import inspect
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ["losslab", "losslab.schedules", "losslab.forecast", "losslab.forecast.scaling", "losslab.forecast.laws", "losslab.losses", "losslab.optim",
            "losslab.stability", "losslab.monitor", "losslab.diagnostics", "losslab.report"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_complete_and_documented(name):
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported)
    for symbol in exported:
        obj = getattr(module, symbol)  # raises if __all__ names something missing
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), f"{name}.{symbol} has no docstring"
    public_defs = [n for n, o in vars(module).items()
                   if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
                   and getattr(o, "__module__", "").startswith(name + ".")]
    missing = sorted(set(public_defs) - set(exported))
    assert not missing, f"{name} defines public names missing from __all__: {missing}"


def test_forecast_does_not_import_torch():
    code = "import sys, losslab.forecast, losslab.schedules; import losslab.forecast.laws; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}, check=True)
    assert out.stdout.strip() == "False"


def test_version_is_exposed():
    import losslab

    assert losslab.__version__.count(".") == 2
