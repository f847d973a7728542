"""Rank-tagged logging and a rank-0 progress line, usable from every room.

The rank is read from the launcher's environment (mpiexec/Hydra, Open MPI, Slurm, torchrun), so
no room needs to import mpi4py just to log. Records look like::

    2026-11-23 14:30:01 [r0/2] INFO hpcsur.parallel: 32000 atoms on a 2x1x1 rank grid
"""
from __future__ import annotations

import logging
import os
import sys
import time

_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "WORLD_SIZE")


def _first_int(names, default):
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default


def env_rank() -> int:
    """This process's rank according to the launcher (0 when not launched in parallel)."""
    return _first_int(_RANK_VARS, 0)


def env_size() -> int:
    """The number of ranks according to the launcher (1 when not launched in parallel)."""
    return _first_int(_SIZE_VARS, 1)


def setup_logging(level: str | int = "INFO", rank: int | None = None, size: int | None = None) -> None:
    """Send ``hpcsur.*`` records to stderr, tagged with ``[r<rank>/<size>]``.

    Non-zero ranks only report warnings and errors unless ``HPCSUR_LOG_ALL_RANKS=1``, so a
    64-rank job does not print every line 64 times.
    """
    rank = env_rank() if rank is None else rank
    size = env_size() if size is None else size
    logger = logging.getLogger("hpcsur")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [r{rank}/{size}] %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    quiet = rank != 0 and os.environ.get("HPCSUR_LOG_ALL_RANKS") != "1"
    logger.setLevel(logging.WARNING if quiet else level)
    logger.propagate = False


class Progress:
    """A single-line progress report with rates, printed by rank 0 only.

    ``Progress(total, unit="frames", rates={"labels": 50})`` reports ``done/total``, the
    percentage, frames/s and e.g. labels/s (``rates`` gives how many of each secondary unit one
    primary unit carries). On a terminal the line is redrawn in place; in a batch log it is
    printed at most every ``interval`` seconds, so Slurm output files stay readable.
    """

    def __init__(self, total: int, unit: str = "items", rates: dict[str, float] | None = None,
                 label: str = "", enabled: bool | None = None, interval: float = 2.0, stream=None):
        self.total, self.unit, self.label = int(total), unit, label
        self.rates = dict(rates or {})
        self.enabled = (env_rank() == 0) if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label} " if self.label else "",
                 f"{self.done}/{self.total} {self.unit}",
                 f" ({100.0 * self.done / max(self.total, 1):.0f}%)",
                 f" {rate:.1f} {self.unit}/s"]
        parts += [f" {rate * per:.1f} {name}/s" for name, per in self.rates.items()]
        if 0 < self.done < self.total:
            parts.append(f" eta {(self.total - self.done) / rate:.0f}s")
        return "".join(parts)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            end = "" if self.tty and self.done < self.total else "\n"
            self.stream.write(("\r" if self.tty else "") + self.line() + end)
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
