"""Small helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
#: what a scratch DVC project needs of the repository
PROJECT_FILES = ("pipeline", "stages", "params.yaml", "dvc.yaml", ".dvcignore", "pyproject.toml")


def scratch_project(
    root: Path, edit_params: Callable[[dict], dict], run_group: str
) -> tuple[Path, dict[str, str]]:
    """A copy of the DVC project in ``root`` (a fresh git repo, params.yaml passed through
    ``edit_params``) and the environment its stages run in: this venv, its own MLflow store and
    a local Ray runtime per stage. Returns (root, env)."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    params = edit_params(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["DENSEPIPE_RUN_GROUP"] = run_group
    env["RAY_ADDRESS"] = ""  # each stage starts its own local runtime
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference of ``a`` from ``b``."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_same_layer(
    ref: nn.Module,
    fast: nn.Module,
    x: torch.Tensor,
    then: Callable[[torch.Tensor], torch.Tensor] = lambda y: y,
    tol: float = 1e-5,
) -> torch.Tensor:
    """``fast`` computes ``ref``'s function: output, input gradient and parameter gradients agree
    within ``tol`` (``then`` is applied to both outputs first). Returns ``fast``'s output."""
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = then(ref(xr)), then(fast(xf))
    assert yf.shape == yr.shape
    assert rel_err(yf, yr) < tol
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    assert rel_err(xf.grad, xr.grad) < tol
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert rel_err(pf.grad, pr.grad) < tol, name
    return yf
