"""Campaign members: the ensemble / sweep points of a job, their stores' progress, and the task a worker
runs for one member (pure, except reading stores and running one member's command)."""
from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from hpcsur.errors import InputError
from hpcsur.log import log_tail, loopback_env
from hpcsur.ops.ensemble import member_spec, sweep_points
from hpcsur.ops.jobspec import Campaign, JobSpec, check_dashboard, check_scheduler, dump_job
from hpcsur.ops.stage_table import find_mpiexec, stage_command
from hpcsur.store.manifest import dir_bytes, progress, read_attrs


log = logging.getLogger("hpcsur.campaign")

STATE_FILE = "campaign.json"
STAGES = ("generate", "all")


# ----------------------------------------------------------------------------- members (pure)
@dataclass(frozen=True)
class Member:
    """One member of a campaign: sweep point ``point``, replica ``replica``, its derived spec."""

    index: int
    point: int
    replica: int
    overrides: dict
    spec: JobSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def store(self) -> str:
        return self.spec.store.path

    @property
    def run_dir(self) -> str:
        return self.spec.run_dir

    @property
    def spec_path(self) -> str:
        """Where the task writes the member's resolved spec."""
        return str(Path(self.run_dir) / f"{self.name}.toml")

    @property
    def frames_total(self) -> int:
        return self.spec.simulation.trajectories * self.spec.simulation.frames_per_trajectory


def campaign_points(campaign: Campaign) -> list[dict[str, Any]]:
    """The sweep points in a stable order: the Cartesian product (keys sorted), or with
    ``zip = true`` the lists paired element-wise; ``[{}]`` when nothing is swept."""
    sweep = campaign.flat_sweep
    if not sweep:
        return [{}]
    if campaign.zip:
        keys = sorted(sweep)
        return [dict(zip(keys, values)) for values in zip(*(sweep[k] for k in keys))]
    return sweep_points(sweep)


def plan_members(spec: JobSpec) -> list[Member]:
    """Every member of ``spec``'s campaign, validated (a bad sweep value is one error line).

    Member ``i = point * members + replica``. A spec without ``[campaign]`` is a campaign of one.
    Member specs carry no ``[campaign]`` table of their own.
    """
    campaign = spec.campaign or Campaign()
    out = []
    for (point, overrides), replica in itertools.product(enumerate(campaign_points(campaign)),
                                                         range(campaign.members)):
        index = point * campaign.members + replica
        member = replace(member_spec(spec, index, overrides), campaign=None)
        out.append(Member(index, point, replica, dict(overrides), member))
    return out


@dataclass(frozen=True)
class Settings:
    """How a campaign runs: the spec's ``[campaign]`` with command-line overrides applied."""

    scheduler: str
    workers: int
    dashboard: Optional[str]  # "127.0.0.1:PORT" or None (off)
    stages: str
    ranks_per_member: int
    interface: Optional[str]
    members: Optional[frozenset] = None   # the member indices to run (--members); None: all of them

    def chooses(self, index: int) -> bool:
        """Whether member ``index`` is one this run is for."""
        return self.members is None or index in self.members


def parse_members(text: str, n: int) -> frozenset:
    """``--members`` as a set of indices: comma-separated indices and inclusive ranges, e.g. ``0-2,5``; each in
    ``0 .. n - 1`` (one error line otherwise)."""
    chosen = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise InputError(f"--members = {text!r}: {part.strip()!r} is not an index or a range like 0-2; "
                             f"allowed: indices 0 .. {n - 1}") from None
        if not 0 <= lo <= hi < n:
            raise InputError(f"--members = {text!r}: {part.strip()!r} is out of range; allowed: indices "
                             f"0 .. {n - 1} (the campaign has {n} member(s)), ranges low-high with low <= high")
        chosen.update(range(lo, hi + 1))
    return frozenset(chosen)


def resolve_settings(spec: JobSpec, scheduler: str | None = None, workers: int | None = None,
                     dashboard: str | None = None, stages: str = "generate", members: str | None = None) -> Settings:
    """Merge command-line options over ``[campaign]``; validate them (one error line each)."""
    campaign = spec.campaign or Campaign()
    if scheduler is not None:
        check_scheduler(scheduler, "--scheduler")
    if dashboard is not None:
        check_dashboard(dashboard, "--dashboard")
    if workers is not None and workers < 1:
        raise InputError(f"--workers = {workers} is out of range; allowed: 1 <= workers")
    if stages not in STAGES:
        raise InputError(f"--stages = {stages!r} is not allowed; choose one of: " + ", ".join(STAGES))
    dash = dashboard if dashboard is not None else campaign.dashboard
    return Settings(scheduler=scheduler if scheduler is not None else campaign.scheduler,
                    workers=workers if workers is not None else campaign.workers,
                    dashboard=None if dash == "off" else dash.replace("localhost", "127.0.0.1"),
                    stages=stages, ranks_per_member=campaign.ranks_per_member, interface=campaign.interface,
                    members=None if members is None else parse_members(members, len(campaign_points(campaign))
                                                                       * campaign.members))


def default_workers(settings: Settings, n_todo: int, cores: int | None = None) -> int:
    """Workers to start: the setting, else ``cores // ranks`` (local) or one per member (slurm);
    never more than there are members to run."""
    if settings.workers:
        return max(1, min(settings.workers, n_todo))
    if settings.scheduler == "slurm":
        return max(1, n_todo)
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores // settings.ranks_per_member, n_todo))


# ----------------------------------------------------------------------------- stores (read only)
@dataclass(frozen=True)
class MemberProgress:
    """What a member's store says right now (nothing is locked or written to find out)."""

    index: int
    name: str
    store: str
    frames_total: int
    frames_done: int = 0
    shards_done: int = 0
    shards_total: Optional[int] = None  # None: the store does not exist yet
    bytes: Optional[int] = None

    @property
    def complete(self) -> bool:
        return self.shards_total is not None and self.shards_done >= self.shards_total

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        return "partial" if self.shards_done else ("created" if self.shards_total is not None else "pending")


def member_progress(member: Member, with_bytes: bool = False, check_hash: bool = False) -> MemberProgress:
    """Read ``member``'s store: shards and frames complete, optionally bytes on disk.

    With ``check_hash`` a store generated from a different spec is an :class:`InputError`.
    """
    path = Path(member.store)
    base = MemberProgress(member.index, member.name, member.store, member.frames_total)
    if not (path / "zarr.json").is_file():
        return replace(base, bytes=dir_bytes(path) if with_bytes and path.is_dir() else None)
    try:
        attrs = read_attrs(path)
    except InputError:  # being created by its generator right now (zarr.json is not written atomically)
        if check_hash:
            raise
        attrs = {}
    if check_hash and attrs.get("data_hash") != member.spec.data_hash():
        raise InputError(f"campaign member {member.index}: store {member.store} was generated from a different "
                         f"spec (data hash {attrs.get('data_hash')} != {member.spec.data_hash()}); move it away "
                         "or change [store] path")
    done = progress(path)
    if not done.exists:
        return replace(base, bytes=dir_bytes(path) if with_bytes else None)
    return replace(base, frames_done=done.frames_done, shards_done=done.shards_done, shards_total=done.shards_total,
                   bytes=dir_bytes(path) if with_bytes else None)


# ----------------------------------------------------------------------------- member tasks
@dataclass(frozen=True)
class MemberTask:
    """Everything a worker needs to run one member (small and picklable)."""

    index: int
    name: str
    spec_toml: str
    spec_path: str
    run_dir: str
    stage: str
    ranks: int
    cwd: str


def member_task(member: Member, settings: Settings, cwd: str) -> MemberTask:
    return MemberTask(member.index, member.name, dump_job(member.spec), member.spec_path, member.run_dir,
                      settings.stages, settings.ranks_per_member, cwd)


def _mpiexec() -> str:
    """The launcher of the MPI that mpi4py uses: the venv's, else the first on PATH."""
    return find_mpiexec()


def member_command(task: MemberTask, python: str, mpiexec: str | None = None) -> list[str]:
    """The stage command of one member (pure): ``generate --resume``, under mpiexec when ranks > 1,
    or for ``all`` the pipeline ``run``, which starts its own ranks (``--ranks``)."""
    hpcsur = [python, "-m", "hpcsur.cli.main"]
    if task.stage == "all":
        return [*hpcsur, "run", task.spec_path, "--ranks", str(task.ranks)]
    return stage_command("generate", task.spec_path, task.ranks, 1, hpcsur=hpcsur, mpiexec=mpiexec or "mpiexec",
                         extra=["--no-progress"])


#: Variables through which an MPI launcher talks to *its* ranks. A member started from inside an
#: MPI process (a dask-mpi worker) must not inherit them, or its own MPI_Init would join that job.
_LAUNCHER_VARS = ("PMI_", "PMIX_", "HYDI_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID",
                  "OMPI_COMM_WORLD_", "OMPI_UNIVERSE_SIZE", "PRTE_")


def member_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a member subprocess (pure): launcher variables removed; MPI on the
    loopback interface (a member's ranks share one node); inside a Slurm job, MPICH's mpiexec
    starts the member's ranks on this node (fork) instead of via srun, unless HYDRA_LAUNCHER /
    HYDRA_RMK are set already."""
    env = loopback_env({k: v for k, v in environ.items() if not k.startswith(_LAUNCHER_VARS)})
    if "SLURM_JOB_ID" in environ:
        env.setdefault("HYDRA_LAUNCHER", "fork")
        env.setdefault("HYDRA_RMK", "user")
    return env


#: Exec'd in front of a member command: arm PR_SET_PDEATHSIG (SIGTERM when the worker thread that
#: started us dies), check the worker did not die before that, then become the member command.
_DEATH_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "sys.exit(1) if os.getppid() != int(sys.argv[1]) else os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def guarded(cmd: list[str], python: str, parent_pid: int) -> list[str]:
    """``cmd`` behind the parent-death guard (Linux); unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [python, "-c", _DEATH_GUARD, str(parent_pid), *cmd]


def run_member(task: MemberTask) -> dict:
    """Run one member's stage as a subprocess (on a dask worker). Never raises for a failed stage:
    the result says ``status = "failed"`` with the exit code and the log's last line."""
    cwd = Path(task.cwd)
    run_dir = cwd / task.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (cwd / task.spec_path).write_text(task.spec_toml)
    cmd = member_command(task, sys.executable, _mpiexec() if task.ranks > 1 else None)
    log_path = run_dir / f"campaign-{task.stage}.log"
    t0 = time.perf_counter()
    with open(log_path, "a") as out:
        out.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {socket.gethostname()} pid {os.getpid()}: "
                  f"{' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(guarded(cmd, sys.executable, os.getpid()), cwd=cwd, env=member_env(os.environ),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait()
        except BaseException:  # the task is being torn down: do not leave the member running
            proc.terminate()
            proc.wait()
            raise
    result = {"index": task.index, "name": task.name, "status": "ok" if rc == 0 else "failed",
              "returncode": rc, "elapsed_s": round(time.perf_counter() - t0, 3),
              "log": str(Path(task.run_dir) / log_path.name), "host": socket.gethostname()}
    if rc != 0:
        result["message"] = log_tail(log_path, 1)
    return result


