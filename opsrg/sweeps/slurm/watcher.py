"""One batched, backed-off poller per sweep (after submitit's InfoWatcher).

Each poll asks the scheduler once for every job of the sweep that is not final yet; final
states are cached and never asked again. Between polls the delay backs off 0, 2, 4, 8 s, then
every 30-60 s (the schedule restarts when something changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from opsrg.sweeps.slurm.cli import JobInfo, base_of

FAST = (0.0, 2.0, 4.0, 8.0)


def backoff(slow: float = 30.0, cap: float = 60.0) -> Iterator[float]:
    """Delays before each poll: 0, 2, 4, 8, then ``slow`` growing by 1.5x up to ``cap``."""
    yield from FAST
    d = slow
    while True:
        yield d
        d = min(cap, d * 1.5)


class Watcher:
    """Caches final job states; ``poll`` makes at most one scheduler query."""

    def __init__(self, query: Callable[[list[str]], dict[str, JobInfo]]) -> None:
        self.query = query
        self.final: dict[str, JobInfo] = {}
        self.last: dict[str, JobInfo] = {}
        self.calls = 0

    def pending_bases(self, expected: dict[str, list[str]]) -> list[str]:
        """Job ids with an element whose final state is not known yet."""
        return sorted(b for b, elems in expected.items() if any(e not in self.final for e in elems))

    def poll(self, expected: dict[str, list[str]]) -> dict[str, JobInfo]:
        """``expected``: job id -> its element ids (``["12"]`` or ``["12_0", "12_1"]``)."""
        todo = self.pending_bases(expected)
        if todo:
            self.calls += 1
            for jid, info in self.query(todo).items():
                self.last[jid] = info
                if info.final:
                    self.final[jid] = info
        out = {}
        for elems in expected.values():
            for e in elems:
                if e in self.final:
                    out[e] = self.final[e]
                elif e in self.last:
                    out[e] = self.last[e]
        return out

    def wait(self, expected: dict[str, list[str]], *, timeout: float | None = None,
             on_poll: Callable[[dict[str, JobInfo]], None] | None = None,
             sleep: Callable[[float], None] = time.sleep, slow: float = 30.0) -> dict[str, JobInfo]:
        """Poll with backoff until every expected element is final (or ``timeout``)."""
        t0 = time.monotonic()
        delays = backoff(slow)
        seen = None
        while True:
            sleep(next(delays))
            infos = self.poll(expected)
            if on_poll:
                on_poll(infos)
            snap = {k: v.state for k, v in infos.items()}
            if snap != seen:
                seen, delays = snap, backoff(slow)
                next(delays)
            if not self.pending_bases(expected):
                return infos
            if timeout is not None and time.monotonic() - t0 > timeout:
                return infos


def expected_elements(job_id: str, tasks: Iterable[int] | None) -> list[str]:
    return [job_id] if tasks is None else [f"{base_of(job_id)}_{i}" for i in tasks]
