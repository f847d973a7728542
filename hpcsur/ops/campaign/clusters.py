"""Campaign clusters: the dask cluster a campaign runs on (local, Slurm via dask-jobqueue, or inside an MPI
job via dask-mpi) and its dashboard."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from hpcsur.errors import InputError
from hpcsur.ops.campaign.members import Settings
from hpcsur.ops.jobspec import JobSpec
from hpcsur.ops.slurm import sbatch_quote, slurm_filename


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
