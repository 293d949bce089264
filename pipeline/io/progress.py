"""Progress of a long extraction as log lines: images done / failed, images per second, ETA.

Pure bookkeeping (no Ray, no printing): the job feeds it finished batches and prints the
lines it returns, so the same meter serves Ray and in-process runs and is testable with a
fake clock.
"""
from __future__ import annotations

import time
from typing import Callable


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts finished images against `total`; `update` returns a line at most every
    `every` seconds (and always for the last batch), else None."""

    def __init__(self, total: int, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.every, self.clock = total, every, clock
        self.ok = self.failed = 0
        self.start = clock()
        self._last = self.start
        self._first = None  # (time, images done) at the first finished batch

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: int, failed: int) -> str | None:
        self.ok += ok
        self.failed += failed
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done)
        if now - self._last < self.every and self.done < self.total:
            return None
        self._last = now
        return self.line()

    def line(self) -> str:
        # The rate counts from the first finished batch: start-up (cluster, model load) can
        # take longer than a short run's work and would make the early ETAs far too long.
        now = self.clock()
        elapsed = now - self.start
        since, done_then = self._first or (now, self.done)
        rate = (self.done - done_then) / (now - since) if now > since else 0.0
        left = self.total - self.done
        eta = "0s" if not left else (_duration(left / rate) if rate > 0 else "?")
        percent = 100 * self.done / self.total if self.total else 100
        return (f"progress: {self.done}/{self.total} images ({percent:.0f}%), {self.ok} ok, "
                f"{self.failed} failed, {f'{rate:.2f}' if rate else '?'} images/s, "
                f"elapsed {_duration(elapsed)}, ETA {eta}")
