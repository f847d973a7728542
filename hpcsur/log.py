"""Rank-tagged logging, a rank-0 progress line, and launcher detection, usable from every room.

The rank is read from the launcher's environment (mpiexec/Hydra, Open MPI, Slurm's srun, torchrun,
horovodrun), so no room needs to import mpi4py just to log. Records look like::

    2026-11-23 14:30:01 [r0/2] INFO hpcsur.parallel: 32000 atoms on a 2x1x1 rank grid

:func:`detect_launch` is the pure function behind :func:`env_rank` / :func:`env_size`: it maps an
environment to a :class:`Launch` (launcher, rank, size, local rank, master host and port when the
launcher names them). The innermost launcher wins, because outer ones leave their variables behind:
``torchrun`` inside an ``sbatch`` script still sees ``SLURM_PROCID=0``, and ``mpiexec`` inside an
allocation still sees ``SLURM_NTASKS``. Order: torchrun, horovodrun (Gloo mode), MPICH/Hydra,
Open MPI, srun (a task of a job step: the ``sbatch`` shell itself is not a parallel launch).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Optional

LAUNCHERS = ("torchrun", "horovodrun", "mpich", "openmpi", "slurm", "none")


@dataclass(frozen=True)
class Launch:
    """How this process was started: ``launcher`` is one of :data:`LAUNCHERS`.

    ``master_addr``/``master_port`` are what the environment says about a rendezvous host (torchrun
    gives both, srun names its first node, Hydra and Open MPI give neither); ``job_id`` is a
    per-job string shared by all ranks (Slurm job and step), or ``None``.
    """

    launcher: str = "none"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    job_id: Optional[str] = None

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def by_mpi(self) -> bool:
        """Started by an MPI launcher (mpiexec/mpirun), so MPI_Init will find its peers."""
        return self.launcher in ("mpich", "openmpi")


def _int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    value = env.get(name, "").strip()
    return int(value) if value.isdigit() else default


def _has(env: Mapping[str, str], *names: str) -> bool:
    return all(_int(env, name) is not None for name in names)


def first_host(nodelist: str) -> Optional[str]:
    """The first host of a Slurm hostlist: ``node[07-09,12],gpu1`` -> ``node07``.

    Every bracket of the first entry is replaced by its first number, zero padding kept
    (``rack[1-2]-n[001-004]`` -> ``rack1-n001``).
    """
    nodelist = nodelist.strip()
    if not nodelist:
        return None
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    entry = nodelist[:end]
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], entry)


def _slurm_tasks_on_node(tasks_per_node: str, node_id: int) -> Optional[int]:
    """``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1``) expanded, at index ``node_id``."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_id] if 0 <= node_id < len(counts) else None


def detect_launch(environ: Optional[Mapping[str, str]] = None) -> Launch:
    """Which launcher started this process, and where it puts this process (see the module doc)."""
    env = os.environ if environ is None else environ
    if _has(env, "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        return Launch("torchrun", _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK"),
                      _int(env, "LOCAL_WORLD_SIZE", 1), env.get("MASTER_ADDR") or None,
                      _int(env, "MASTER_PORT"), env.get("TORCHELASTIC_RUN_ID") or None)
    if _has(env, "HOROVOD_RANK", "HOROVOD_SIZE"):
        return Launch("horovodrun", _int(env, "HOROVOD_RANK"), _int(env, "HOROVOD_SIZE"),
                      _int(env, "HOROVOD_LOCAL_RANK", 0), _int(env, "HOROVOD_LOCAL_SIZE", 1),
                      env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR") or None, None, None)
    if _has(env, "PMI_RANK", "PMI_SIZE"):
        return Launch("mpich", _int(env, "PMI_RANK"), _int(env, "PMI_SIZE"), _int(env, "MPI_LOCALRANKID", 0),
                      _int(env, "MPI_LOCALNRANKS", 1))
    if _has(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        return Launch("openmpi", _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE"),
                      _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0), _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1))
    # srun sets SLURM_STEP_NUM_TASKS; an sbatch shell has SLURM_PROCID=0 and SLURM_NTASKS=N but no
    # step variables, and a plain `python` there is one process, not rank 0 of N.
    size = _int(env, "SLURM_STEP_NUM_TASKS")
    if _has(env, "SLURM_PROCID") and size is not None:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        local_size = _slurm_tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "",
                                          _int(env, "SLURM_NODEID", 0))
        job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
        return Launch("slurm", _int(env, "SLURM_PROCID"), size, _int(env, "SLURM_LOCALID", 0), local_size or 1,
                      first_host(nodes), _int(env, "MASTER_PORT"),
                      f"{job}.{step}" if job and step else job)
    return Launch()


#: Where every rank of a job runs on this one machine, MPICH's network modules (UCX or libfabric's
#: tcp / sockets providers) listen on the loopback interface only, not on every interface.
#: (Hydra's own control port still binds all interfaces: MPICH 5 has no option for it.)
LOOPBACK_MPI = {"UCX_NET_DEVICES": "lo", "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo"}


def loopback_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for an MPI job confined to this machine: :data:`LOOPBACK_MPI` unless set already."""
    return {**LOOPBACK_MPI, **environ}


def env_rank() -> int:
    """This process's rank according to the launcher (0 when not launched in parallel)."""
    return detect_launch().rank


def env_size() -> int:
    """The number of ranks according to the launcher (1 when not launched in parallel)."""
    return detect_launch().size


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

    A resumed run first calls ``resumed(n)`` with the units an earlier process finished: they count in
    ``done/total`` but not in the rate, so the rate and the eta are this process's own,
    rate = (done - resumed) / elapsed and eta = (total - done) / rate.
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
        self.before = 0                    # units finished by an earlier process (resume)
        self.start = time.perf_counter()
        self._last = 0.0

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (self.done - self.before) / elapsed
        parts = [f"{self.label} " if self.label else "",
                 f"{self.done}/{self.total} {self.unit}",
                 f" ({100.0 * self.done / max(self.total, 1):.0f}%)",
                 f" {rate:.1f} {self.unit}/s"]
        parts += [f" {rate * per:.1f} {name}/s" for name, per in self.rates.items()]
        if rate > 0 and self.done < self.total:
            parts.append(f" eta {(self.total - self.done) / rate:.0f}s")
        return "".join(parts)

    def resumed(self, n: int) -> None:
        """Count ``n`` units an earlier process finished (shown in done/total, not in the rate)."""
        self.done += n
        self.before += n
        self.start = time.perf_counter()

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


def log_tail(path, lines: int = 3) -> str:
    """The last ``lines`` lines of a log file joined with `` | `` (for one-line error messages); "" when unreadable."""
    from pathlib import Path

    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
