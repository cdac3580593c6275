"""Progress of long work as plain log lines: rows done of the total, the rate and an ETA.

One line every `every_s` seconds, no terminal control codes, so a terminal, a CI log and a Ray Job
log all show the same thing (Ray Data's own progress bars stay off: platform/runtime.py):

    [seqctr.embed] embed: 12,288/50,000 items (25%), 498 items/s, ETA 1m16s

`ticking()` also prints while the caller is blocked waiting for the next batch (actor start-up, a
slow block), so a stalled stage still shows a line every few seconds.

    with Progress(say, "embed", total=50_000, unit="items").ticking() as progress:
        for batch in batches:
            progress.advance(len(batch))
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EVERY_S = 5.0  # seconds between two progress lines (tests lower it)


def format_duration(seconds: float) -> str:
    """'7s', '1m16s', '2h03m'; '?' when unknown (no rate yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(what: str, done: int, total: int, elapsed: float, unit: str) -> str:
    """'what: done/total unit (share%), rate unit/s, ETA t' (the ETA assumes the rate so far holds)."""
    elapsed = max(elapsed, 1e-9)
    rate = done / elapsed
    left = max(total - done, 0)
    eta = left / rate if rate > 0 else (0.0 if left == 0 else float("inf"))
    share = min(100.0 * done / total, 100.0) if total else 100.0
    return f"{what}: {done:,}/{total:,} {unit} ({share:.0f}%), {rate:,.0f} {unit}/s, ETA {format_duration(eta)}"


class Progress:
    """Counts rows done and prints a `progress_line` through `say` at most once every `every_s` seconds."""

    def __init__(
        self,
        say: Callable[[str], None],
        what: str,
        total: int,
        unit: str = "rows",
        every_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.say, self.what, self.total, self.unit = say, what, max(int(total), 0), unit
        self.every_s = EVERY_S if every_s is None else every_s
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        """Count `n` more done; print a line when `every_s` has passed since the last one."""
        with self._lock:
            self.done += int(n)
        self.maybe_say()

    def maybe_say(self) -> None:
        now = self.clock()
        with self._lock:
            if now - self.last < self.every_s or self.done >= self.total:
                return
            self.last = now
            line = self.line(now)
        self.say(line)

    def line(self, now: float | None = None) -> str:
        return progress_line(self.what, self.done, self.total, (now or self.clock()) - self.start, self.unit)

    def finish(self) -> None:
        """The closing line: rows done, the mean rate and the time taken."""
        elapsed = self.clock() - self.start
        rate = self.done / max(elapsed, 1e-9)
        self.say(f"{self.what}: {self.done:,}/{self.total:,} {self.unit} done, {rate:,.0f} {self.unit}/s in "
                 f"{format_duration(elapsed)}")  # fmt: skip

    @contextmanager
    def ticking(self, finish: bool = True) -> Iterator[Progress]:
        """A daemon thread calls `maybe_say` every second while the block runs; `finish()` on success."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(min(1.0, max(self.every_s, 0.01))):
                self.maybe_say()

        thread = threading.Thread(target=tick, name=f"progress-{self.what}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
        if finish:
            self.finish()
