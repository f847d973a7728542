"""Campaigns: ensembles and parameter sweeps of one job spec, run as dask tasks.

A job spec's ``[campaign]`` table (:class:`hpcsur.ops.jobspec.Campaign`) names an ensemble size
(``members``), a parameter sweep (``sweep``, Cartesian product or ``zip``-ped) and the resources of
each member (``ranks_per_member``). Member ``i`` is :func:`hpcsur.ops.ensemble.member_spec`: the base
spec with the sweep point applied and its own seed, store (``<store>-i``) and run folder
(``<run_dir>-i``), so members never share a store and run independently.

Each member is one dask task. The task writes the member's resolved spec to
``<member run folder>/<member name>.toml`` and runs the stage as a subprocess::

    [mpiexec -n ranks_per_member] python -m hpcsur.cli.main generate <member>.toml --resume --no-progress

(``--stages all``: ``hpcsur run <member>.toml --ranks ranks_per_member``, the whole pipeline,
which starts its own ranks and resumes finished stages itself). Output goes to ``<member run folder>/campaign-<stage>.log``. A dask worker has one thread,
so it runs one member at a time; a member's ranks are processes of its own.

Resume
------
Before submitting anything the driver reads every member's store: a complete store whose data hash
matches is skipped, a partial one is continued (``generate --resume`` rewrites exactly the shards
without a completion record), and a store written from a different spec is an error, reported
before anything runs. So re-running a finished campaign is a no-op, and re-running an interrupted
one loses and duplicates nothing. The member subprocess is armed with ``PR_SET_PDEATHSIG``
(Linux): if its dask worker dies -- for instance because the driver was killed, which takes its
LocalCluster workers with it -- the generator gets SIGTERM instead of running on orphaned and
holding its store's lock.

Schedulers
----------
``local`` (default)
    A ``LocalCluster`` of worker *processes* with one thread each; scheduler, workers and the
    dashboard listen on 127.0.0.1 only. ``workers = 0`` means ``cores // ranks_per_member``.
``slurm``
    dask-jobqueue ``SLURMCluster``: every dask worker is one Slurm job of one task with
    ``--cpus-per-task = ranks_per_member`` (partition, account, time, mem and set-up lines from
    ``[slurm]``), and ``workers`` jobs are requested (0: one per member to run). Inside the job a
    member's ``mpiexec`` starts its ranks on the job's node (``HYDRA_LAUNCHER=fork``). The scheduler
    runs in the driver and binds to 127.0.0.1 unless ``[campaign] interface`` names the interface
    the compute nodes reach it on (e.g. ``ib0``). ``hpcsur campaign JOB --scheduler slurm --dry-run``
    prints the job script without submitting anything.
``mpi``
    dask-mpi inside an MPI job: ``mpiexec -n R hpcsur campaign JOB --scheduler mpi`` with R >= 3;
    rank 0 is the scheduler, rank 1 the driver (it prints progress and writes the state file),
    ranks 2.. are the R - 2 workers. Everything stays on the loopback interface
    (``initialize(interface="lo")``), so all ranks must share one node.
``tcp://HOST:PORT``
    An already running scheduler; its workers must see the same file system and working folder.

The driver prints a progress line (members done / total, frames, frames/s, read from the stores)
and, at the end, a summary table. ``<run_dir>/campaign.json`` holds the state: written when the
cluster is up (dashboard URL, scheduler, driver pid), updated as members finish, final summary at
the end. ``hpcsur monitor`` (:mod:`hpcsur.ops.monitor`) reads it together with the stores.
"""
from __future__ import annotations

import itertools
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from hpcsur.errors import InputError
from hpcsur.log import loopback_env
from hpcsur.ops.ensemble import member_spec, sweep_points
from hpcsur.ops.jobspec import Campaign, JobSpec, check_dashboard, check_scheduler, dump_job
from hpcsur.ops.slurm import sbatch_quote, slurm_filename
from hpcsur.ops.stage_table import find_mpiexec, stage_command
from hpcsur.store.lock import acquire_folder_lock, describe_holder
from hpcsur.store.manifest import dir_bytes, progress, read_attrs, write_json_atomic

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


def resolve_settings(spec: JobSpec, scheduler: str | None = None, workers: int | None = None,
                     dashboard: str | None = None, stages: str = "generate") -> Settings:
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
                    stages=stages, ranks_per_member=campaign.ranks_per_member, interface=campaign.interface)


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


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


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
        result["message"] = _tail(log_path)
    return result


# ----------------------------------------------------------------------------- clusters
def slurm_job_kwargs(spec: JobSpec, settings: Settings) -> dict:
    """Keyword arguments of every ``SLURMJob`` / ``SLURMCluster`` worker job (pure).

    One Slurm job = one dask worker with one thread and ``ranks_per_member x cpus_per_task`` CPUs
    for the member's ranks. Partition, account, QOS, time, mem, extra sbatch options and set-up
    lines come from ``[slurm]``; without ``mem`` the partition's default applies.
    """
    sl = spec.slurm
    logs = slurm_filename(slurm_log_dir(spec))
    # not log_directory (made even by a dry run); quoted for sbatch's own parser (spaces, quotes, #)
    extra = [f"-o {sbatch_quote(logs + '/%x-%j.out', 'run folder')}",
             f"-e {sbatch_quote(logs + '/%x-%j.err', 'run folder')}"]
    if getattr(sl, "qos", None):
        extra.append(f"--qos={sl.qos}")
    extra += list(getattr(sl, "options", []))
    kwargs = {
        "cores": 1, "processes": 1, "job_cpu": settings.ranks_per_member * sl.cpus_per_task,
        "memory": sl.mem or "4GB", "job_mem": sl.mem, "walltime": sl.time, "queue": sl.partition,
        "account": sl.account, "job_name": f"hpcsur-{spec.name}", "python": sys.executable,
        "job_script_prologue": [f"cd {shlex.quote(os.getcwd())}", *sl.setup],
        "job_extra_directives": extra, "interface": settings.interface,
    }
    if sl.mem is None:
        kwargs["job_directives_skip"] = ["--mem"]
    return kwargs


def slurm_log_dir(spec: JobSpec) -> str:
    """Where the Slurm worker jobs write their output (created when the cluster starts)."""
    return os.path.abspath(Path(spec.run_dir) / "slurm-workers")


def render_slurm_script(spec: JobSpec, settings: Settings, scheduler_address: str | None = None) -> str:
    """The batch script SLURMCluster submits for each worker (the scheduler address is filled in
    when the cluster starts)."""
    from dask_jobqueue.slurm import SLURMJob

    job = SLURMJob(scheduler_address or "tcp://<scheduler-address>:<port>", name="<worker-name>",
                   **slurm_job_kwargs(spec, settings))
    return job.job_script()


@dataclass
class ClusterInfo:
    """What the state file records about the running cluster."""

    scheduler_address: str
    dashboard: Optional[str]
    workers: int


@contextmanager
def open_client(spec: JobSpec, settings: Settings, n_workers: int) -> Iterator[tuple[Any, ClusterInfo]]:
    """A dask client on the chosen scheduler; the cluster (if we started one) closes on exit."""
    from distributed import Client

    if settings.scheduler == "local":
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=settings.dashboard, scheduler_port=0,
                               worker_dashboard_address=None, memory_limit=0)
    elif settings.scheduler == "slurm":
        from dask_jobqueue import SLURMCluster

        Path(slurm_log_dir(spec)).mkdir(parents=True, exist_ok=True)
        cluster = SLURMCluster(**slurm_job_kwargs(spec, settings), scheduler_options={
            "dashboard": settings.dashboard is not None, "dashboard_address": settings.dashboard,
            **({"interface": settings.interface} if settings.interface else {"host": "127.0.0.1"})})
        cluster.scale(jobs=n_workers)
    else:
        cluster = None
    try:
        if cluster is not None:
            client = Client(cluster)
        elif settings.scheduler == "mpi":  # dask-mpi put the scheduler's address in dask's config
            client = Client()
            client.wait_for_workers(1, timeout=120)  # worker ranks register after the driver connects
        else:
            client = Client(settings.scheduler)
        try:
            if cluster is None:
                n_workers = len(client.scheduler_info().get("workers", {}))
            info = ClusterInfo(client.scheduler.address, _dashboard_url(client), n_workers)
            yield client, info
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _dashboard_url(client) -> Optional[str]:
    """The dashboard's /status URL, or None when the scheduler serves none."""
    services = client.scheduler_info().get("services", {})
    if "dashboard" not in services:
        return None
    return client.dashboard_link


# ----------------------------------------------------------------------------- driver
def progress_line(name: str, members_done: int, members_total: int, frames_done: int, frames_total: int,
                  rate: float, workers: int | None = None) -> str:
    """``campaign NAME: 2/3 members, 480/720 frames (67%), 35.2 frames/s[, 2 workers]`` (pure)."""
    pct = 100.0 * frames_done / max(frames_total, 1)
    return (f"campaign {name}: {members_done}/{members_total} members, {frames_done}/{frames_total} frames "
            f"({pct:.0f}%), {rate:.1f} frames/s"
            + (f", {workers} worker{'' if workers == 1 else 's'}" if workers is not None else ""))


def summary_table(rows: list[dict]) -> str:
    """A fixed-width table of the final member records (pure)."""
    head = ("member", "point", "status", "shards", "frames", "bytes", "time_s", "store")
    body = [(r["name"], point_text(r["overrides"]), r["status"],
             f"{r['shards_done']}/{'-' if r['shards_total'] is None else r['shards_total']}",
             f"{r['frames_done']}/{r['frames_total']}", human_bytes(r.get("bytes")),
             "-" if r.get("elapsed_s") is None else f"{r['elapsed_s']:.1f}", r["store"]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body))


def point_text(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(overrides.items())) or "-"


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def state_path(spec: JobSpec) -> Path:
    return Path(spec.run_dir) / STATE_FILE


def member_record(member: Member, prog: MemberProgress, status: str, result: dict | None = None) -> dict:
    """One member's entry in the state file."""
    rec = {"index": member.index, "name": member.name, "overrides": member.overrides, "store": member.store,
           "run_dir": member.run_dir, "status": status, "frames_total": prog.frames_total,
           "frames_done": prog.frames_done, "shards_done": prog.shards_done, "shards_total": prog.shards_total,
           "bytes": prog.bytes}
    if result:
        rec.update({k: result[k] for k in ("returncode", "elapsed_s", "log", "host", "message") if k in result})
    return rec


class _Driver:
    """The driver's bookkeeping: state file, progress line, member records."""

    def __init__(self, spec: JobSpec, settings: Settings, members: list[Member], stream):
        self.spec, self.settings, self.members, self.stream = spec, settings, members, stream
        self.path = state_path(spec)
        self.started = time.time()
        self.status = {m.index: "pending" for m in members}
        self.results: dict[int, dict] = {}
        self.state: dict[str, Any] = {}
        self.frames_at_start = 0

    def snapshot(self, with_bytes=False) -> dict[int, MemberProgress]:
        return {m.index: member_progress(m, with_bytes=with_bytes) for m in self.members}

    def write(self, run_state: str, progress: dict[int, MemberProgress], **extra) -> None:
        frames = sum(p.frames_done for p in progress.values())
        self.state.update({
            "job": self.spec.name, "source": self.spec.source, "state": run_state, "stages": self.settings.stages,
            "scheduler": self.settings.scheduler, "ranks_per_member": self.settings.ranks_per_member,
            "pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(),
            "started": _iso(self.started), "started_unix": self.started, "updated_unix": time.time(),
            "frames_at_start": self.frames_at_start,
            "totals": {"members": len(self.members),
                       "members_done": sum(s in ("ok", "skipped") for s in self.status.values()),
                       "members_failed": sum(s == "failed" for s in self.status.values()),
                       "frames_total": sum(p.frames_total for p in progress.values()), "frames_done": frames},
            "members": [member_record(m, progress[m.index], self.status[m.index], self.results.get(m.index))
                        for m in self.members], **extra})
        write_json_atomic(self.path, self.state)

    def progress(self, progress: dict[int, MemberProgress], workers: int | None = None) -> str:
        frames = sum(p.frames_done for p in progress.values())
        rate = (frames - self.frames_at_start) / max(time.time() - self.started, 1e-9)
        done = sum(s in ("ok", "skipped", "failed") for s in self.status.values())
        return progress_line(self.spec.name, done, len(self.members), frames,
                             sum(p.frames_total for p in progress.values()), rate, workers)

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def describe_plan(members: list[Member], settings: Settings, todo: set[int]) -> str:
    """The dry-run listing: one line per member with its command (pure)."""
    lines = [f"# {len(members)} members, {len(todo)} to run; scheduler {settings.scheduler}, "
             f"{settings.ranks_per_member} rank(s) per member, stages {settings.stages}"]
    for m in members:
        task = member_task(m, settings, ".")
        cmd = " ".join(member_command(task, "python", "mpiexec"))
        lines.append(f"{m.index:>4} {m.name}  {point_text(m.overrides)}  store {m.store}  "
                     f"{'run: ' + cmd if m.index in todo else 'skip (complete)'}")
    return "\n".join(lines)


def prepare(spec: JobSpec, settings: Settings) -> tuple[list[Member], dict[int, MemberProgress], set[int]]:
    """Validate everything and read the stores; writes nothing. Returns the members, their
    progress and the indices still to run."""
    members = plan_members(spec)
    if settings.stages == "all":  # the pipeline's learning stages need these tables
        spec.require("autoencoder", "hpcsur campaign --stages all")
        spec.require("latent", "hpcsur campaign --stages all")
    if settings.ranks_per_member > 1:
        _mpiexec()
    progress = {m.index: member_progress(m, check_hash=True) for m in members}
    todo = {m.index for m in members if settings.stages == "all" or not progress[m.index].complete}
    return members, progress, todo


def run_campaign(spec: JobSpec, settings: Settings, *, dry_run: bool = False, interval: float = 2.0,
                 stream=None, prepared=None) -> int:
    """Run (or with ``dry_run`` only describe) ``spec``'s campaign. Returns the exit code:
    0 when every member is complete, 1 when a member failed."""
    stream = stream or sys.stderr
    members, progress, todo = prepared or prepare(spec, settings)
    if dry_run:
        print(describe_plan(members, settings, todo))
        if settings.scheduler == "slurm":
            print("# worker job script (SLURMCluster, one per dask worker):")
            print(render_slurm_script(spec, settings))
        return 0
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_folder_lock(spec.run_dir, "run folder", "campaign driver")
    except InputError:
        raise InputError(f"campaign {spec.name}: already running ({describe_holder(spec.run_dir)})") from None
    with lock:
        driver = _Driver(spec, settings, members, stream)
        driver.frames_at_start = sum(p.frames_done for p in progress.values())
        for m in members:
            if m.index not in todo:
                driver.status[m.index] = "skipped"
        if not todo:
            final = driver.snapshot(with_bytes=True)
            driver.write("finished", final, finished=_iso(time.time()), dashboard=None)
            driver.say(f"campaign {spec.name}: all {len(members)} members complete; nothing to do")
            driver.say(summary_table(driver.state["members"]))
            return 0
        n_workers = default_workers(settings, len(todo))
        run_state = "interrupted"
        try:
            with open_client(spec, settings, n_workers) as (client, info):
                driver.write("running", progress, dashboard=info.dashboard, scheduler_address=info.scheduler_address,
                             workers=info.workers)
                log.info("campaign %s: %d of %d members to run on %s (%d worker(s)); dashboard %s",
                         spec.name, len(todo), len(members), info.scheduler_address, info.workers,
                         info.dashboard or "off")
                _run_tasks(client, driver, [m for m in members if m.index in todo], interval)
            run_state = "failed" if any(s == "failed" for s in driver.status.values()) else "finished"
        finally:
            final = driver.snapshot(with_bytes=True)
            driver.write(run_state, final, finished=_iso(time.time()))
    driver.say(driver.progress(final))
    driver.say(summary_table(driver.state["members"]))
    driver.say(f"campaign {spec.name}: {run_state}; state in {driver.path}")
    failed = [r for r in driver.state["members"] if r["status"] == "failed"]
    for r in failed:
        log.error("member %s failed (exit %s): %s; log %s", r["name"], r.get("returncode"), r.get("message", ""),
                  r.get("log"))
    return 1 if failed else 0


def check_result(member: Member, result: dict, stages: str) -> dict:
    """A generate stage that exited 0 must have left a complete store; anything else is a failure."""
    if result["status"] != "ok" or stages != "generate":
        return result
    prog = member_progress(member)
    if prog.complete:
        return result
    return {**result, "status": "failed", "message": f"the stage exited 0 but store {member.store} is incomplete "
                                                    f"({prog.shards_done}/{prog.shards_total or '-'} shards)"}


def _run_tasks(client, driver: _Driver, todo: list[Member], interval: float) -> None:
    """Submit members as worker threads free up, record results, redraw the progress line.

    At most as many members are in flight as the workers have threads: members run for minutes
    to hours, and one handed to a busy worker would wait there while another worker idles (dask
    does not queue a handful of tasks on the scheduler). So "running" in the state file means
    running on a worker, and "queued" means not handed out yet.
    """
    cwd = os.getcwd()
    token = uuid.uuid4().hex[:6]
    waiting = list(todo)
    for m in todo:
        driver.status[m.index] = "queued"
    in_flight: dict = {}
    last = -float("inf")
    while waiting or in_flight:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
        while waiting and len(in_flight) < max(threads, 1):
            m = waiting.pop(0)
            future = client.submit(run_member, member_task(m, driver.settings, cwd), key=f"{m.name}-{token}",
                                   pure=False, retries=0)
            in_flight[future] = m
            driver.status[m.index] = "running"
        finished = [f for f in in_flight if f.done()]
        for f in finished:
            m = in_flight.pop(f)
            try:
                result = f.result()
            except Exception as err:  # the task itself broke (its worker was lost too often, ...)
                result = {"status": "failed", "returncode": None, "message": f"{type(err).__name__}: {err}"}
            result = check_result(m, result, driver.settings.stages)
            driver.results[m.index] = result
            driver.status[m.index] = result["status"]
        now = time.monotonic()
        if finished or now - last >= interval:
            snap = driver.snapshot()
            driver.write("running", snap)
            if now - last >= interval:  # the worker count shows a Slurm campaign still waiting in the queue
                driver.say(driver.progress(snap, threads))
                last = now
        if finished:
            continue  # hand out the next members at once
        time.sleep(min(0.25, interval))


# ----------------------------------------------------------------------------- dask-mpi
def mpi_initialize(settings: Settings) -> bool:
    """Start dask-mpi on every rank; True on the driver rank (1), False on scheduler/worker ranks
    after the driver has finished. Everything listens on the loopback interface."""
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() < 3:
        raise InputError("--scheduler mpi needs mpiexec -n 3 or more (rank 0 scheduler, "
                         f"rank 1 driver, ranks 2.. workers); got {MPI.COMM_WORLD.Get_size()}")
    from dask_mpi import initialize

    logging.getLogger("distributed").setLevel(logging.WARNING)  # scheduler/worker ranks: no INFO chatter
    return initialize(interface="lo", nthreads=1, dashboard=settings.dashboard is not None,
                      dashboard_address=settings.dashboard or ":0", memory_limit=0, exit=False)


def mpi_finish() -> None:
    """Driver rank: tell the dask-mpi scheduler (and so the workers) to shut down."""
    from dask_mpi import send_close_signal

    send_close_signal()


def terminate_on_sigterm() -> None:
    """Turn SIGTERM (scancel, a time limit) into KeyboardInterrupt, so the driver records the
    campaign as interrupted and closes its cluster (whose workers then stop their members)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
