import pytest

from losslab import ConfigError, UnknownNameError
from losslab._registry import Info, Registry


def make() -> Registry[Info]:
    reg: Registry[Info] = Registry("loss")
    reg.register(Info("cross_entropy", "CE", obj=1), aliases=("ce",))
    reg.register(Info("focal", "focal", obj=2))
    return reg


def test_lookup_by_name_alias_and_dash():
    reg = make()
    assert reg.get("cross_entropy") == 1
    assert reg.get("CE") == 1
    assert reg.get("cross-entropy") == 1
    assert reg.names() == ["cross_entropy", "focal"]
    assert "focal" in reg and "nope" not in reg and len(reg) == 2


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'cross_entropi'; did you mean 'cross_entropy'") as err:
        make().get("cross_entropi")
    assert isinstance(err.value, KeyError)
    assert "known losses: cross_entropy, focal" in str(err.value)  # not "losss"


def test_unknown_name_lists_the_known_names_in_plain_english():
    reg = Registry("detector")
    reg.register(Info("zscore", "z"))
    with pytest.raises(UnknownNameError, match=r"known detectors: zscore$"):
        reg.get("nope")


def test_duplicates_are_rejected():
    reg = make()
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register(Info("focal", "again"))
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register(Info("other", "x"), aliases=("ce",))
