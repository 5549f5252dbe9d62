"""Progress for long work (image and kernel builds, merges).

On a terminal: a rich progress bar. Otherwise (CI logs, pipes): one plain line per step and
at most one line per 10% of a counted task, so logs stay readable.
"""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO


class Progress(Protocol):
    def step(self, message: str) -> None:
        """A new phase begins (prints a line, resets the bar)."""

    def total(self, n: float) -> None:
        """The current phase has `n` units of work."""

    def advance(self, n: float = 1) -> None:
        """`n` more units are done."""


class PlainProgress:
    def __init__(self, title: str, out: TextIO):
        self.title = title
        self.out = out
        self._total = 0.0
        self._done = 0.0
        self._last_decile = -1
        self._t0 = time.monotonic()

    def _say(self, text: str) -> None:
        print(f"{self.title}: {text} [{time.monotonic() - self._t0:.1f}s]", file=self.out)
        self.out.flush()

    def step(self, message: str) -> None:
        self._total, self._done, self._last_decile = 0.0, 0.0, -1
        self._say(message)

    def total(self, n: float) -> None:
        self._total = n

    def advance(self, n: float = 1) -> None:
        self._done += n
        if self._total > 0:
            decile = int(10 * min(self._done, self._total) / self._total)
            if decile > self._last_decile:
                self._last_decile = decile
                self._say(f"{10 * decile}%")


class RichProgress:
    def __init__(self, title: str, bar: "object", task: int):
        self.title = title
        self._bar = bar
        self._task = task

    def step(self, message: str) -> None:
        # Messages quote file names and tool output: rich must print them, not read markup.
        from rich.markup import escape

        bar = self._bar
        bar.console.print(f"{self.title}: {message}", markup=False)  # type: ignore[attr-defined]
        bar.update(self._task, description=escape(message), completed=0, total=None)  # type: ignore[attr-defined]

    def total(self, n: float) -> None:
        self._bar.update(self._task, total=n)  # type: ignore[attr-defined]

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._task, n)  # type: ignore[attr-defined]


@contextmanager
def progress(title: str, out: TextIO | None = None) -> Iterator[Progress]:
    stream = out if out is not None else sys.stderr
    if not stream.isatty():
        yield PlainProgress(title, stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=False,
    ) as bar:
        task = bar.add_task(title, total=None)
        yield RichProgress(title, bar, task)


class NullProgress:
    def step(self, message: str) -> None:
        pass

    def total(self, n: float) -> None:
        pass

    def advance(self, n: float = 1) -> None:
        pass
