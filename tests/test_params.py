"""params.yaml resolution and validation: errors name the key."""

import pytest
from tests_helpers import REPO

from pipeline.errors import ParamsError
from pipeline.experiment import train_config
from pipeline.params import Params, load_params, resolve


def test_profile_values_resolve():
    assert resolve({"a": {"tiny": 1, "paper": 2}, "b": [{"tiny": 3, "paper": 4}]}, "paper") == {
        "a": 2,
        "b": [4],
    }


def test_repo_params_resolve_for_both_profiles():
    tiny = load_params(REPO / "params.yaml")
    assert tiny.profile == "tiny" and tiny.get("data.source") == "builtin"
    paper = Params({**tiny_raw(), "profile": "paper"})
    assert paper.get("data.source") == "url"
    assert paper.get("train.fcn32s.lr") == pytest.approx(1e-10)
    assert paper.get("train.common.batch_size") == 1


def tiny_raw():
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_missing_key_and_bad_profile_are_named():
    with pytest.raises(ParamsError, match="train.nope"):
        Params({"train": {}}).get("train.nope")
    with pytest.raises(ParamsError, match="profile"):
        Params({"profile": "huge"})


def test_train_config_validates_before_work():
    raw = tiny_raw()
    raw["train"]["fcn32s"]["lr"] = -1
    with pytest.raises(ParamsError, match="train.fcn32s.lr"):
        train_config(Params(raw), "fcn32s", root=REPO)
    raw = tiny_raw()
    raw["train"]["common"]["optimizer"] = "lion"
    with pytest.raises(ParamsError, match="optimizer"):
        train_config(Params(raw), "fcn32s", root=REPO)
    with pytest.raises(ParamsError, match="fcn64s"):
        train_config(Params(tiny_raw()), "fcn64s", root=REPO)
