"""Progress a person can read: done/total, rate and time left, as one line."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

CONSOLE_ENV = "NAIT_CONSOLE_PROGRESS"  # set by the CLI: progress lines also go to the terminal


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Progress:
    """Counts units (rows, steps) and an optional rate quantity (tokens) since ``start``."""

    what: str
    total: int
    unit: str = "rows"
    rate_unit: str = "tokens"
    started: float = field(default_factory=lambda: time.perf_counter())
    done: int = 0
    amount: float = 0.0

    def update(self, done: int, amount: float | None = None) -> str:
        self.done = done
        if amount is not None:
            self.amount = amount
        return self.line()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = f", {self.amount / elapsed:,.0f} {self.rate_unit}/s" if self.amount else ""
        left = (elapsed / self.done) * (self.total - self.done) if self.done else None
        eta = f", {_duration(left)} left" if left is not None and self.done < self.total else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.what}: {self.done:,}/{self.total:,} {self.unit}{share}{rate}, {_duration(elapsed)}{eta}"


LOG_EVERY_S = 15.0  # without a terminal (a log file, CI), one progress line per this many seconds
_last_logged = [0.0]


def to_console(line: str, final: bool = False) -> None:
    """Show a progress line in the terminal when the CLI asked for it: rewritten in place on a tty,
    else one line every LOG_EVERY_S seconds and the final one, so logs stay short."""
    if not os.environ.get(CONSOLE_ENV):
        return
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
    else:
        now = time.monotonic()
        if not final and now - _last_logged[0] < LOG_EVERY_S:
            return
        _last_logged[0] = now
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
