"""The densepipe CLI explains itself and computes model facts from the module graph."""

import json
import subprocess
import sys

from pipeline.cli import main


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True
    ).stdout
    for command in ("models", "describe", "download", "upper-bound", "sweep", "predict", "export"):
        assert command in out


def test_describe_vgg16_fcn(capsys):
    assert main(["describe", "fcn32s"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["rf_size"] == 404 and facts["max_stride"] == 32
    assert facts["parameters"] == 136_152_917


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["describe", "fcn64s"]) == 2
    assert "fcn64s" in capsys.readouterr().err


def test_upper_bound_on_a_hand_made_label(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    label = np.zeros((8, 8), np.uint8)
    label[:4, :4] = 1
    Image.fromarray(label).save(tmp_path / "a.png")
    (tmp_path / "ids.txt").write_text("a\n")
    args = ["upper-bound", "--labels", str(tmp_path), "--split", str(tmp_path / "ids.txt")]
    assert main([*args, "--factors", "4", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["factors"]["4"]["mean_iu"] == 1.0  # the object is aligned with the 4x4 cells


def test_sweep_refuses_an_unknown_sweep_before_ray_starts(capsys):
    assert main(["sweep", "nope"]) == 2
    err = capsys.readouterr().err
    assert "sweeps: no sweep 'nope'" in err and "fcn32s-lr-momentum" in err


def test_sweep_refuses_a_bad_space_naming_the_key(tmp_path, capsys):
    import yaml

    from pipeline.params import repo_root

    raw = yaml.safe_load((repo_root() / "params.yaml").read_text())
    sweep = raw["experiments"]["default"]["sweeps"]["fcn32s-lr-momentum"]
    sweep["space"]["train.lr"] = {"loguniform": [0, 1.0e-2]}
    raw["run"] = raw["experiments"]["default"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["sweep", "fcn32s-lr-momentum", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "sweeps.fcn32s-lr-momentum.space.train.lr.loguniform" in capsys.readouterr().err
