"""params.yaml resolution and validation: errors name the key."""

import json
import re

import pytest
import yaml
from tests_helpers import REPO

from pipeline.errors import ParamsError
from pipeline.experiment import train_config
from pipeline.params import NAME, Params, load_params, resolve


def test_profile_values_resolve():
    assert resolve({"a": {"tiny": 1, "paper": 2}, "b": [{"tiny": 3, "paper": 4}]}, "paper") == {
        "a": 2,
        "b": [4],
    }


def test_repo_params_resolve_for_both_profiles():
    tiny = load_params(REPO / "params.yaml")
    assert tiny.profile == "tiny"
    paper = Params({**tiny_raw(), "profile": "paper"})
    assert paper.get("run.train.fcn16s.train.lr") == pytest.approx(1e-12)
    assert train_config(paper, "fcn32s", root=REPO).lr == pytest.approx(1e-10)
    assert paper.get("train.common.batch_size") == 1


def tiny_raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_missing_key_and_bad_profile_are_named():
    with pytest.raises(ParamsError, match="train.nope"):
        Params({"train": {}}).get("train.nope")
    with pytest.raises(ParamsError, match="profile"):
        Params({"profile": "huge"})


def test_train_config_validates_before_work():
    raw = tiny_raw()
    raw["run"]["train"]["fcn16s"]["train"]["lr"] = -1
    with pytest.raises(ParamsError, match="experiments.fcn16s.train.lr"):
        train_config(Params(raw), "fcn16s", root=REPO)
    raw = tiny_raw()
    raw["train"]["common"]["optimizer"] = "lion"
    with pytest.raises(ParamsError, match="optimizer"):
        train_config(Params(raw), "fcn32s", root=REPO)
    with pytest.raises(ParamsError, match="fcn64s"):
        train_config(Params(tiny_raw()), "fcn64s", root=REPO)


def test_every_declared_experiment_resolves_in_both_profiles():
    """The `all` set is what `run: *all` builds: each entry must resolve before any work."""
    from pipeline.experiment import declared_experiments

    for profile in ("tiny", "paper"):
        params = Params({**tiny_raw(), "profile": profile})
        names = declared_experiments(params)
        assert {"fcn32s", "fcn8s-atonce", "deeplab-7x7", "fcn32s-shape"} <= set(names)
        for name in names:
            config = train_config(params, name, root=REPO)
            assert config.iterations >= 0 and config.lr > 0


def test_experiment_errors_name_the_key():
    from pipeline.experiment import experiment

    raw = tiny_raw()
    raw["run"]["train"]["fcn16s"]["init"] = "fcn99s"
    with pytest.raises(ParamsError, match="experiments.fcn16s.init"):
        experiment(Params(raw), "fcn16s")
    raw = tiny_raw()
    raw["run"]["train"]["fcn16s"]["mask"] = {"test": "sky"}
    with pytest.raises(ParamsError, match="experiments.fcn16s.mask.test"):
        experiment(Params(raw), "fcn16s")
    raw = tiny_raw()
    raw["run"]["train"]["fcn16s"]["test_scales"] = [0.5, -1]
    with pytest.raises(ParamsError, match="experiments.fcn16s.test_scales"):
        experiment(Params(raw), "fcn16s")
    raw = tiny_raw()
    raw["run"]["train"]["fcn16s"]["train"]["lr_decay"] = 0.1
    with pytest.raises(ParamsError, match="lr_decay"):
        train_config(Params(raw), "fcn16s", root=REPO)


def test_run_set_is_an_alias_of_a_declared_set():
    """`run: *default` in params.yaml: the active set is exactly the default one."""
    raw = tiny_raw()
    assert raw["run"] == raw["experiments"]["default"]
    assert set(raw["experiments"]["default"]["train"]) < set(raw["experiments"]["all"]["train"])


def test_yaml_is_parsed_by_libyaml_with_the_pure_parsers_result():
    """params.yaml is read ~30 times by a no-op `dvc repro` (ruamel.yaml, once per params
    dependency) and once or more by every stage (PyYAML): both must use their C parser, and
    the C parsers must give exactly what the pure-Python ones give on the project's YAML."""
    from ruamel.yaml import YAML

    from pipeline.params import parse_yaml

    ruamel_fast = YAML(typ="safe")  # as dvc.utils.serialize.parse_yaml builds it
    assert ruamel_fast.Parser.__name__ == "CParser", "ruamel.yaml.clib missing: DVC parses slowly"
    assert yaml.__with_libyaml__
    files = [REPO / "params.yaml", REPO / "dvc.yaml"]
    files += sorted((REPO / "pipeline").rglob("*.yaml"))
    for path in files:
        text = path.read_text()
        pure = yaml.load(text, Loader=yaml.SafeLoader)
        assert parse_yaml(text) == pure, path
        fast = ruamel_fast.load(text)
        assert fast == YAML(typ="safe", pure=True).load(text), path
    with pytest.raises(yaml.YAMLError):
        parse_yaml("a: [1, 2")


@pytest.mark.parametrize(
    "where", ["experiments.all.train", "experiments.default.sweeps", "run.train", "run.sweeps"]
)
def test_a_dotted_experiment_name_is_refused_up_front(where, tmp_path):
    """dvc.yaml reads run.train.<name> as a params path and DVC splits it at '.': a name like
    'conv7-0.5' failed only when `dvc repro` reached its stage, 55 minutes into a `run: *all`."""
    # a JSON round trip unshares what the anchors share (run: *default is experiments.default)
    data = json.loads(json.dumps(yaml.safe_load((REPO / "params.yaml").read_text())))
    node = data
    for part in where.split("."):
        node = node.setdefault(part, {})
    node["pixelnet-conv7-0.5"] = {"model": "pixelnet"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=rf"{re.escape(where)}: name 'pixelnet-conv7-0.5'"):
        load_params(path)
    assert NAME.fullmatch("pixelnet-seg-conv7-0_5-1_0") and not NAME.fullmatch("a b")
