"""What Ray prints into a stage's output: warnings, and one progress bar per named operation.

Ray Data 2.60, when stdout is not a terminal (``make repro > log``, DVC's output), logs a block
of seven or more lines every 10 s per running dataset ("Total Progress", every operator with
its "backpressured" state), plus "Starting execution" / "Execution plan" / "execution
finished" lines per execution; in-process training runs one execution per epoch, so a tiny
``make repro`` logged about 150 such lines. Ray Train adds a "Reported metrics" line per report.

:func:`quiet_ray` (called by ``init_ray``) turns that off and keeps warnings:

- Ray Data's own progress display is off (``DataContext.enable_progress_bars``; the context
  travels with every dataset to the processes that execute it), and so are its start-of-
  execution lines (``print_on_execution_start``);
- the ``ray.data`` and ``ray.train`` loggers drop INFO here (with the Ray Train loggers named by
  their file's path, which its ``LoggingConfig`` misses: "Reporting training result ..."), and
  ``RAY_DATA_LOG_LEVEL=WARNING`` (in ``ENV``) does the same in the processes Ray starts from
  this one (a local runtime's workers inherit it; ``pipeline.runtime.localray`` starts ``make
  repro``'s cluster with it). The training loop calls :func:`quiet_ray` in its workers too;
- Ray Train 2.60's own ``DataConfig`` copies ``ExecutionOptions.exclude_resources``, which
  Ray Data 2.60 deprecates: a two-line ``RayDeprecationWarning`` per training run that no
  setting of ours can avoid, filtered by its message (any other warning still shows);
- the GCS's ERROR line when it kills an actor whose process has already exited ("Failed to
  kill actor ... Socket closed": a finished stage's actors, or a Ray Data helper of this one),
  which Ray forwards in red to every driver of the cluster, is dropped from the console by
  :func:`drop_benign_cluster_errors` (``init_ray`` calls it; it stays in the GCS's log file);
  any other forwarded line still shows;
- in its place, code that runs a long Ray Data operation names it with :func:`data_progress`,
  which shows one bar (``pipeline.runtime.progress``) counting the rows an operator has produced.
  Unnamed executions (a training epoch's read) show nothing: the training bar covers them.

Ray is imported inside :func:`quiet_ray` only, as in ``raycluster``: modules that name an
operation (``pipeline.data.prepare``) stay importable without loading Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.runtime.progress import progress_bar

#: environment of every process Ray starts for us: Ray Data logs warnings and errors only
ENV = {"RAY_DATA_LOG_LEVEL": "WARNING"}
QUIET_LOGGERS = ("ray.data", "ray.train")
#: Ray's own deprecation, raised inside Ray Train (ray/train/_internal/data_config.py)
RAY_INTERNAL_DEPRECATION = r"`ExecutionOptions\.exclude_resources` is deprecated"


def quiet_ray() -> None:
    """Warnings only from Ray Data and Ray Train in this process and the ones Ray starts from
    it; Ray Data's progress display replaced by :func:`data_progress` bars. Idempotent."""
    import ray.data

    os.environ.update(ENV)
    warnings.filterwarnings("ignore", message=RAY_INTERNAL_DEPRECATION)
    for name in [*QUIET_LOGGERS, *logging.root.manager.loggerDict]:
        if name in QUIET_LOGGERS or f"{os.sep}ray{os.sep}train{os.sep}" in name:
            logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if OperationBar not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(OperationBar)


#: a forwarded GCS line holding all of these is Ray killing an actor that had already exited
BENIGN_GCS_ERROR = ("Failed to kill actor", "Socket closed")


def drop_benign_cluster_errors() -> None:
    """Wrap the driver's printer of forwarded cluster logs (Ray's ``ray_print_logs`` handler) so
    that :data:`BENIGN_GCS_ERROR` lines from the GCS are not printed. Ray's dispatcher is not a
    public API: if it moves, nothing is wrapped and the lines show as before. Idempotent."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    handlers = getattr(dispatcher, "handlers", None)
    if not isinstance(handlers, list):
        return
    dispatcher.handlers = [
        (name, _drop_benign(handler) if name == "ray_print_logs" else handler)
        for name, handler in handlers
    ]


def _drop_benign(handler):
    if getattr(handler, "drops_benign", False):
        return handler

    def handle(data: dict) -> None:
        if data.get("pid") == "gcs_server":
            lines = [
                line
                for line in data.get("lines", [])
                if not all(s in line for s in BENIGN_GCS_ERROR)
            ]
            if not lines:
                return
            data = {**data, "lines": lines}
        handler(data)

    handle.drops_benign = True
    return handle


@dataclass
class _Named:
    desc: str
    total: int | None
    unit: str
    op: str | None


_current: _Named | None = None


@contextlib.contextmanager
def data_progress(
    desc: str, total: int | None = None, unit: str = "row", op: str | None = None
) -> Iterator[None]:
    """Show one bar for the Ray Data execution(s) run inside this block (in this process).

    The bar counts the rows produced by the operator whose name contains ``op`` (e.g.
    ``"Map(load)"``; fused operators keep the name in theirs), by default the last operator;
    ``total`` is the expected count (None: unknown, the bar shows count and rate).
    """
    global _current
    previous, _current = _current, _Named(desc, total, unit, op)
    try:
        yield
    finally:
        _current = previous


class OperationBar:
    """A Ray Data execution callback (the four methods of Ray's ``ExecutionCallback``, which the
    executor calls on every class in ``DataContext.custom_execution_callback_classes``): a bar
    for executions named by :func:`data_progress`.

    It reads the executor's operator metrics (``rows_task_outputs_generated``), which are not
    a stable Ray API: if they move, the bar stays at zero and closes complete; the run goes on.
    """

    def __init__(self):
        # Made by the planner in every process that executes a dataset (the context travels
        # with it), before the executor picks its progress display: Ray Data's warning that its
        # bars are off (once per process) is spent here, since densepipe turned them off.
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
        self.named = _current
        self.bar = None
        self.op = None

    def before_execution_starts(self, executor) -> None:
        if self.named is None:
            return
        ops = list(getattr(executor, "_topology", None) or [])[1:]  # [0] is the input buffer
        wanted = self.named.op
        matching = [op for op in ops if wanted is None or wanted in getattr(op, "name", "")]
        self.op = matching[0] if wanted and matching else (ops[-1] if ops else None)
        self.bar = progress_bar(total=self.named.total, desc=self.named.desc, unit=self.named.unit)

    def on_execution_step(self, executor) -> None:
        if self.bar is None or self.op is None:
            return
        metrics = getattr(self.op, "metrics", None)
        done = int(getattr(metrics, "rows_task_outputs_generated", 0) or 0)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def after_execution_succeeds(self, executor) -> None:
        if self.bar is None:
            return
        self.on_execution_step(executor)
        if self.bar.total is not None and self.bar.n < self.bar.total:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
        self.bar = None

    def after_execution_fails(self, executor, error: Exception) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
