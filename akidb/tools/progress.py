"""Progress of `akidb import` and `akidb export`: a rich progress bar on a terminal, plain periodic lines
otherwise (a log file or CI wants lines it can read later, not redraws).

Progress goes to stderr: `akidb export` may write its documents to stdout.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn


class Reporter(Protocol):
    def start(self, total: int | None, done: int) -> None:
        """`total`: the amount of work (bytes of the file, or documents), None if unknown; `done`: already done
        before this run (a resumed import)."""

    def update(self, done: int, documents: int, rejected: int) -> None:
        """`documents`: documents handled in this run so far."""

    def stop(self) -> None: ...


class BarReporter:
    def __init__(self, what: str, stream: TextIO) -> None:
        self.what = what
        self.progress = Progress(
            TextColumn(f"[bold]{what}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[documents]:,} docs  {task.fields[rate]:,.0f} docs/s  {task.fields[rejected]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self.task: TaskID | None = None
        self.started = time.monotonic()

    def start(self, total: int | None, done: int) -> None:
        self.started = time.monotonic()
        self.progress.start()
        self.task = self.progress.add_task(self.what, total=total, completed=done, documents=0, rate=0.0, rejected="")

    def update(self, done: int, documents: int, rejected: int) -> None:
        if self.task is None:
            return
        rate = documents / max(time.monotonic() - self.started, 1e-9)
        label = f"{rejected:,} rejected" if rejected else ""
        self.progress.update(self.task, completed=done, documents=documents, rate=rate, rejected=label)

    def stop(self) -> None:
        self.progress.stop()


class LineReporter:
    """One line every `interval_s` seconds: done so far, documents/s and the time left."""

    def __init__(self, what: str, stream: TextIO, interval_s: float = 5.0) -> None:
        self.what = what
        self.stream = stream
        self.interval_s = interval_s
        self.total: int | None = None
        self.first_done = 0
        self.started = time.monotonic()
        self.last_line = self.started

    def start(self, total: int | None, done: int) -> None:
        self.total, self.first_done = total, done
        self.started = self.last_line = time.monotonic()

    def update(self, done: int, documents: int, rejected: int) -> None:
        now = time.monotonic()
        if now - self.last_line < self.interval_s:
            return
        self.last_line = now
        print(self.line(done, documents, rejected, now), file=self.stream, flush=True)

    def line(self, done: int, documents: int, rejected: int, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        parts = [f"{self.what}: {documents:,} documents", f"{documents / elapsed:,.0f} docs/s"]
        if self.total:
            parts.insert(1, f"{100 * done / self.total:.0f} %")
            speed = (done - self.first_done) / elapsed
            if speed > 0:
                parts.append(f"ETA {_duration((self.total - done) / speed)}")
        if rejected:
            parts.append(f"{rejected:,} rejected")
        return ", ".join(parts)

    def stop(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def reporter(what: str, *, quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    """A bar when the stream (stderr) is a terminal, lines otherwise; nothing with quiet."""
    stream = stream or sys.stderr
    if quiet:
        return LineReporter(what, stream, interval_s=float("inf"))
    if stream.isatty():
        return BarReporter(what, stream)
    return LineReporter(what, stream)
