"""Progress display for long jobs: a live bar on a terminal, a plain line every few seconds in a
log file, driven by counters that the Rust core updates."""

from __future__ import annotations

import sys
import time


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Reporter:
    """Shows `(description, done, total, unit, extra)` updates.

    On a terminal: a rich progress bar. Elsewhere: one plain line every `every` seconds, so a log
    file stays readable.
    """

    def __init__(self, stream=None, every: float = 5.0, force_plain: bool = False):
        self.stream = stream or sys.stderr
        self.every = every
        self.live = not force_plain and self.stream.isatty()
        self._bar = None
        self._task = None
        self._desc = None
        self._last_print = 0.0
        self._rate_mark = None  # (time, done) when the current phase started
        self._closed = False  # whether the current phase's last line (its final update) was shown
        self._total = 1  # the current phase's total, as last reported

    @classmethod
    def from_env(cls) -> "Reporter":
        """`ARROWS_PROGRESS_SECONDS` sets the interval of plain lines (default 5)."""
        import math
        import os

        from arrows.errors import InputError

        text = os.environ.get("ARROWS_PROGRESS_SECONDS", "5")
        try:
            every = float(text)
        except ValueError:
            every = math.nan
        if not every >= 0 or math.isinf(every):  # a typo ended every command with a traceback; nan never printed
            raise InputError(f"ARROWS_PROGRESS_SECONDS={text!r}: not a number of seconds; give e.g. 5 (0: every update), or unset it")
        return cls(every=every)

    def __enter__(self):
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, desc: str, done: float, total: float, unit: str = "bytes", extra: str = "", final: bool = False):
        """Show progress; `final=True` marks the phase's last update (always printed in a log)."""
        now = time.monotonic()
        if desc != self._desc:
            # A new phase means the last one ended, perhaps between two polls or two plain lines:
            # show it complete, not at the last figure seen (a log read "sampling: 57.4%", then
            # "encoding").
            if self._desc is not None and not self._closed:
                if self._bar is not None:
                    self._bar.update(self._task, completed=self._total)
                else:
                    print(f"{self._desc}: 100.0%  done in {human_seconds(now - self._rate_mark[0])}", file=self.stream, flush=True)
            self._desc = desc
            self._rate_mark = (now, done)
            self._closed = False
            if self._bar is not None:
                self._task = self._bar.add_task(desc, total=max(total, 1), info="")
        t0, d0 = self._rate_mark
        rate = (done - d0) / (now - t0) if now > t0 + 0.5 else 0.0
        if unit == "bytes":
            amount = f"{human_bytes(done)} / {human_bytes(total)}"
            speed = f"{rate / 1e6:.1f} MB/s" if rate else ""
        else:
            amount = f"{done:,.0f} / {total:,.0f} {unit}"
            speed = f"{rate:,.0f} {unit}/s" if rate else ""
        info = "  ".join(x for x in (amount, speed, extra) if x)
        self._closed, self._total = final, max(total, 1)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=max(total, 1), info=info)
        elif final or now - self._last_print >= self.every:
            self._last_print = now
            pct = 100.0 * done / total if total else 100.0
            eta = f"ETA {human_seconds((total - done) / rate)}" if rate > 0 else ""
            print(f"{desc}: {pct:5.1f}%  {info}  {eta}".rstrip(), file=self.stream, flush=True)
