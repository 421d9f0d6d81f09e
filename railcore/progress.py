"""Progress lines for long-running commands: a step or phase at a time, with counts, elapsed and ETA.

    progress = Progress("sim", total=7)
    progress.step("nearest")          # sim 1/7 (14%) nearest  elapsed 3.1 s  ETA 18.6 s
    progress.done()                   # sim done: 7/7 in 21.0 s

Plain text to stderr (stdout stays the command's result). On a terminal one line is rewritten in
place with ``\\r``; anywhere else (a log, CI, a pipe) each step is a line of its own, so nothing is
lost in a file. A caller that prints other lines between steps calls ``close()`` first, so they do
not land on the end of the line being rewritten. The clock and the stream are injected, so the
lines are testable without waiting. The ETA assumes the steps left take what the steps done took
on average (or a known ``pace``); none is shown before the first step, nor when the total is
unknown (``total=None``: a count and the elapsed time only).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``1 h 02 min``: short, for a progress line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Counts steps of a job of ``total`` steps (None: unknown) and writes a line for each."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        pace: float | None = None,
    ) -> None:
        self.label = label
        self.pace = pace  # steps per second where known (a timed run: 1); else the mean pace so far
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.tty = _isatty(self.stream) if tty is None else tty
        self.count = 0
        self.started = clock()
        self._open_line = False  # a \r line is on screen and needs a newline before anything else

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> float | None:
        """Seconds left at ``pace`` (else the mean pace so far); None before the first step or without a total."""
        if self.total is None or self.count == 0:
            return None
        left = max(self.total - self.count, 0)
        return left / self.pace if self.pace else left * self.elapsed() / self.count

    def line(self, note: str = "") -> str:
        """The progress line for where the job stands now (no newline)."""
        if self.total is None:
            head = f"{self.label} {self.count}"
        else:
            pct = 100 * self.count / self.total if self.total else 100.0
            head = f"{self.label} {self.count}/{self.total} ({pct:.0f}%)"
        parts = [head]
        if note:
            parts.append(note)
        parts.append(f"elapsed {duration(self.elapsed())}")
        eta = self.eta()
        if eta is not None and self.count < (self.total or 0):
            parts.append(f"ETA {duration(eta)}")
        return "  ".join(parts)

    def step(self, note: str = "", n: int = 1) -> None:
        """``n`` more steps done (the one just finished named by ``note``)."""
        self.count += n
        self._write(self.line(note))

    def update(self, count: int, note: str = "") -> None:
        """The job stands at ``count`` steps (e.g. seconds of a timed run done)."""
        self.count = count
        self._write(self.line(note))

    def phase(self, note: str) -> None:
        """A phase begins: said as is, with the elapsed time, without counting a step (on a line of its own,
        below a step line left on screen)."""
        self.close()
        self._write(f"{self.label}: {note}  elapsed {duration(self.elapsed())}", keep=True)

    def done(self, note: str = "") -> None:
        """The last line: how many steps, in how long."""
        counted = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        tail = f" ({note})" if note else ""
        self._write(f"{self.label} done: {counted} in {duration(self.elapsed())}{tail}", keep=True)

    def _write(self, text: str, keep: bool = False) -> None:
        if self.tty:
            # \x1b[K clears what a longer previous line left; a kept line ends with a newline.
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if keep else ""))
            self._open_line = not keep
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a ``\\r`` line left open (so the next output starts on a line of its own)."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
