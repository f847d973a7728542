"""Measuring performance one way everywhere: the benchmarks in ``benchmarks/`` and ``hpcsur scale``.

Machines are noisy (here: 2 shared vCPUs), so measurements are repeated and compared with a reference
measured in the same run, never with a number from elsewhere:

* :func:`time_runs` times ``fn()`` ``repeats`` times (after ``warmup`` untimed calls): wall and CPU
  seconds, with the median, the best and the spread;
* :func:`interleave` times several variants round by round in alternating order (AB, BA, AB, ...),
  so slow drift of the machine (load, clocks, page cache) falls on all variants alike;
* :class:`Timed` is a block's wall and CPU time with the load average before and after it (what the
  ``load`` columns of a benchmark or a scaling point report);
* :func:`machine` and :func:`emit`: every benchmark ends with one JSON line that carries the machine's
  facts (host, CPUs, load) next to its numbers.
"""
from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass
class Runs:
    """Seconds of repeated runs of one thing."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def spread(self) -> float:
        """(max - min) / median of the wall times: how far to trust the median."""
        return (max(self.wall) - min(self.wall)) / self.median if self.median > 0 else 0.0

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


def time_once(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 0) -> Runs:
    """``fn()`` timed ``repeats`` times after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    runs = Runs()
    for _ in range(repeats):
        runs.add(*time_once(fn))
    return runs


def interleave(variants: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, Runs]:
    """Each variant timed once per round, in the variants' order on even rounds and reversed on odd ones."""
    names = list(variants)
    out = {name: Runs() for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].add(*time_once(variants[name]))
    return out


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timed:
    """``with Timed() as t: ...`` -> ``t.wall``, ``t.cpu`` seconds and ``t.load_before``, ``t.load_after``."""

    def __enter__(self) -> "Timed":
        self.load_before, self.wall, self.cpu, self.load_after = load(), float("nan"), float("nan"), float("nan")
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._t, time.process_time() - self._c
        self.load_after = load()


def machine() -> dict:
    """The facts a measurement depends on: host, CPUs usable by this process, load, Python."""
    return {"host": socket.gethostname(), "cpus": len(os.sched_getaffinity(0)),
            "load_1min": round(load(), 2), "python": sys.version.split()[0]}


def emit(result: dict) -> dict:
    """Print a benchmark's result as one JSON line (its last stdout line), with :func:`machine` added."""
    out = {**result, "machine": {**machine(), **result.get("machine", {})}}
    print(json.dumps(out), flush=True)
    return out
