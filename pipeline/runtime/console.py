"""What a stage prints: one clear line for an expected error, a loud banner for a trial run.

Expected errors (``DensepipeError``: a bad params key, a missing or corrupt file, a failed
download) are the user's to fix, so a stage prints ``error (<stage>): <message>`` and exits 2; the
traceback is for bugs, and for anyone who sets ``DENSEPIPE_DEBUG=1``. Errors raised inside Ray
tasks or Ray Train workers arrive wrapped; the original is found and printed the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import DensepipeError
from pipeline.params import Params, trial_limits

DEBUG_ENV = "DENSEPIPE_DEBUG"


def expected_error(exc: BaseException | None) -> DensepipeError | None:
    """The DensepipeError behind ``exc`` (itself, a Ray task's cause, a Train worker's), if any."""
    queue, seen = [exc], set()
    while queue:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # ray.exceptions.RayTaskError
        if isinstance(current, DensepipeError) and not isinstance(cause, BaseException):
            return current
        queue.append(cause if isinstance(cause, BaseException) else None)
        failures = getattr(current, "worker_failures", None)  # Ray Train's WorkerGroupError
        if isinstance(failures, Mapping):
            queue.extend(failures.values())
        queue += [current.__cause__, current.__context__]
    return None


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage's ``main``; an expected error prints one line and exits with status 2."""
    try:
        main()
    except Exception as exc:
        error = expected_error(exc)
        if error is None or os.environ.get(DEBUG_ENV):
            raise
        stage = os.environ.get("DVC_STAGE") or os.path.basename(sys.argv[0])
        print(f"error ({stage}): {error}", file=sys.stderr)
        print(f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(2)


def limits_banner(limits: Mapping[str, Any]) -> str | None:
    """The line every stage of a trial run prints (None when no limit is set)."""
    active = {k: v for k, v in limits.items() if v}
    if not active:
        return None
    shown = ", ".join(f"{k}={v}" for k, v in active.items())
    return f"TRIAL RUN (limits: {shown}): capped steps and data, NOT a result for the papers"


def announce_limits(params: Params) -> dict[str, int]:
    """Print the trial-run banner when ``limits`` caps anything; the active caps (for metrics)."""
    active = {k: v for k, v in trial_limits(params).items() if v}
    banner = limits_banner(active)
    if banner:
        print(banner, flush=True)
    return active
