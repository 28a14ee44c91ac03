"""Progress bars that read well in a terminal and in a log.

On a terminal a bar redraws in place (tqdm's default). In a log (``make repro > log``, DVC's
output, a Ray worker's forwarded output) tqdm's carriage-return redraws pile up into one huge
line, or thousands of lines once something splits them; here a bar instead prints one plain
line at most every ``LOG_INTERVAL_S`` seconds (and its last state), each with its count, rate
and time left:

    evaluate fcn32s:  40%|####      | 58/145 [00:30<00:45,  1.93img/s]

Every long step of the pipeline uses :func:`progress_bar` (download bytes, evaluation, the CRF
search, the BSDS benchmark, training steps); Ray Data operations get one through
``pipeline.runtime.raylogs.data_progress``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

#: seconds between two lines of a bar in a log (a terminal redraws every 0.1 s, in place)
LOG_INTERVAL_S = 30.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class LogLines:
    """A stream for tqdm in a log: each redraw becomes one line; a redraw of the same count
    (tqdm's final one on close) is dropped."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        state = line.split("[", 1)[0]  # the description, percentage and count, not the timing
        if line and state != self.last:
            self.stream.write(line + "\n")
            self.last = state

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, *, log_interval: float | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` that redraws in place on a terminal and, in a log, prints
    a line at most every ``log_interval`` seconds (default ``LOG_INTERVAL_S``)."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not is_terminal(stream):
        interval = LOG_INTERVAL_S if log_interval is None else log_interval
        kwargs.setdefault("mininterval", interval)
        kwargs.setdefault("maxinterval", max(interval, 10.0))
        stream = LogLines(stream)
    return tqdm(iterable, file=stream, **kwargs)
