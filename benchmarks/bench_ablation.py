"""The typical ablation, timed (not a test): in a project where `make repro` has run, a no-op
`dvc repro` and then one experiment's lr edited and `dvc repro` again, each run the way `make
repro` runs it (one local Ray head that the stages join). Prints the wall time of each, the
stages that reran and the time of each stage. The no-op is also timed as a bare `dvc repro`
(no head), with DVC's YAML parsing through ruamel.yaml's C parser (as installed) and, side by
side, forced to its pure-Python parser (ruamel.yaml 0.19.1's default without ruamel.yaml.clib).

It works on a copy of PROJECT (the copy keeps the DVC cache and the outputs, so nothing is
recomputed but what the edit touches); PROJECT itself is never changed.

    .venv/bin/python benchmarks/bench_ablation.py PROJECT [--experiment fcn8s] [--lr 2e-3]

Goals (performance issue): the no-op under 5 s; the ablation at most half of what it took
before stage start-up was shared (one head per `make repro`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUN_WITH_HEAD = [sys.executable, "-m", "pipeline.runtime.localray", "--"]
BIN = Path(sys.executable).parent


def project_env(project: Path) -> dict:
    """The environment `make repro` gives the stages: the venv first on PATH, the project's code."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(project)}


def timed_repro(project: Path) -> tuple[float, list[tuple[str, float]]]:
    """Wall seconds of `dvc repro` under one local Ray head, and (stage, seconds) per stage
    that ran (from the moment DVC printed its "Running stage" line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*RUN_WITH_HEAD, str(BIN / "dvc"), "repro"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=project_env(project),
    )
    marks = []
    for line in proc.stdout:
        found = re.match(r"Running stage '([^']+)'", line)
        if found:
            marks.append((found.group(1), time.perf_counter()))
    if proc.wait():
        raise SystemExit(f"dvc repro failed in {project} (exit {proc.returncode})")
    end = time.perf_counter()
    stages = [
        (name, (marks[i + 1][1] if i + 1 < len(marks) else end) - at)
        for i, (name, at) in enumerate(marks)
    ]
    return end - start, stages


# `dvc repro` with ruamel.yaml's C parser switched off: what DVC does without ruamel.yaml.clib
PURE_YAML_DVC = (
    "import sys, ruamel.yaml.main as m; m.CParser = None; "
    "from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def bare_noop(project: Path, pure_yaml: bool) -> float:
    """Wall seconds of a bare `dvc repro` (no Ray head) that must run nothing."""
    dvc = [sys.executable, "-c", PURE_YAML_DVC] if pure_yaml else [str(BIN / "dvc")]
    start = time.perf_counter()
    out = subprocess.run(
        [*dvc, "repro"], cwd=project, env=project_env(project), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if out.returncode or "Running stage" in out.stdout:
        raise SystemExit(f"the no-op dvc repro failed or ran a stage in {project}:\n{out.stdout}")
    return seconds


def set_lr(project: Path, experiment: str, lr: float) -> None:
    """Edit the active set's entry for ``experiment`` (train.lr) as a user would."""
    path = project / "params.yaml"
    data = yaml.safe_load(path.read_text())
    entry = data["run"]["train"][experiment]
    entry["train"] = {**(entry.get("train") or {}), "lr": lr}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="a project where `make repro` has run")
    parser.add_argument("--experiment", default="fcn8s", help="the experiment whose lr changes")
    parser.add_argument("--lr", type=float, default=2.0e-3)
    args = parser.parse_args()
    if not (args.project / "dvc.lock").is_file():
        raise SystemExit(f"{args.project}: no dvc.lock (run `make repro` there first)")
    with tempfile.TemporaryDirectory(prefix="bench-ablation-") as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(args.project, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
        # DVC knows files by inode and mtime: a copy's outputs are hashed once first (untimed),
        # as they were in the project itself after its `make repro`
        subprocess.run(
            [str(BIN / "dvc"), "status", "-q"], cwd=copy, env=project_env(copy), check=False
        )
        seconds, stages = timed_repro(copy)
        print(
            f"no-op dvc repro under a Ray head (make repro's way): {seconds:.1f} s, "
            f"{len(stages)} stages ran"
        )
        fast, pure = [], []
        for _ in range(3):  # interleaved
            fast.append(bare_noop(copy, pure_yaml=False))
            pure.append(bare_noop(copy, pure_yaml=True))
        print(
            f"no-op bare dvc repro (goal < 5 s), best of 3: {min(fast):.2f} s with the C YAML "
            f"parser, {min(pure):.2f} s pure-Python: {min(pure) / min(fast):.2f}x"
        )
        set_lr(copy, args.experiment, args.lr)
        seconds, stages = timed_repro(copy)
        print(f"{args.experiment} lr -> {args.lr:g}, dvc repro: {seconds:.1f} s")
        for name, took in stages:
            print(f"  {name}: {took:.1f} s")


if __name__ == "__main__":
    main()
