"""The ``ddp`` backend: torch.distributed (Gloo on CPU; NCCL when there is a GPU per local rank).

**Why no ``DistributedDataParallel`` wrapper.** The latent models take ``autograd.grad`` of a
potential inside ``forward``; the potential's output bias (and any parameter that only shifts V)
then gets no gradient. Checked with torch 2.13 + Gloo under torchrun: the plain DDP wrapper then
never finishes its bucket, so the first step silently applies *unsynchronised* gradients (the ranks'
gradient norms differed) and the second forward raises "Expected to have finished reduction in the
prior iteration". ``find_unused_parameters=True`` fixes that at the cost of a graph walk per
forward, but the wrapper still only synchronises what goes through its own ``forward``. So the
gradients are averaged at ``optimizer.step()`` instead (one flat allreduce per step, see
:mod:`hpcsur.learn.distributed.base`), which holds for any model, any number of forward calls and
gradient accumulation; there is no overlap of communication with ``backward``, which for the small
MLPs trained here costs little.

**Rendezvous.** Under ``torchrun`` the process group comes from its environment (``env://``).
Otherwise rank 0 opens a :class:`torch.distributed.TCPStore`:

- launched by MPI (mpiexec/mpirun) with mpi4py importable: on a free port the OS picks (port 0),
  and the host and port reach the other ranks by an MPI broadcast (no port guessing, no race);
- otherwise (srun, or no mpi4py): on ``MASTER_PORT``, else a port derived from the Slurm job and
  step id (the same on every rank, different between concurrent steps), else 29500; the host is
  ``MASTER_ADDR``, else the first node of the step, else 127.0.0.1 when all ranks share a node.

``MASTER_ADDR``/``MASTER_PORT`` always win when set. mpi4py is not imported under srun: the pip
MPICH wheel aborts under Slurm's PMIx.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
from typing import Any, Optional

import torch
import torch.distributed as dist

from hpcsur.errors import InputError
from hpcsur.learn.distributed.base import Backend
from hpcsur.log import Launch

DEFAULT_PORT = 29500
DERIVED_PORTS = (15000, 25000)  # below Linux's ephemeral range (32768-60999)
DEFAULT_TIMEOUT_S = 600.0


def derived_port(job_id: Optional[str]) -> Optional[int]:
    """A port every rank of one job step computes alike: ``DERIVED_PORTS[0] <= port < DERIVED_PORTS[1]``."""
    if not job_id:
        return None
    lo, hi = DERIVED_PORTS
    return lo + int(hashlib.sha1(job_id.encode()).hexdigest(), 16) % (hi - lo)


def _env_port() -> Optional[int]:
    value = os.environ.get("MASTER_PORT", "").strip()
    return int(value) if value.isdigit() else None


def _single_node(launch: Launch) -> bool:
    return launch.local_size >= launch.size


def rendezvous_host(launch: Launch) -> str:
    """Where rank 0's store listens, as the other ranks should dial it (see the module docstring)."""
    host = os.environ.get("MASTER_ADDR") or launch.master_addr
    if host:
        return host
    if _single_node(launch):
        return "127.0.0.1"
    raise InputError(f"backend ddp: {launch.size} ranks on several nodes and no rendezvous host known "
                     f"(launcher {launch.launcher}); set MASTER_ADDR to rank 0's host name")


def _mpi_comm(launch: Launch):
    """mpi4py's COMM_WORLD when MPI launched us and mpi4py imports, else None."""
    if not launch.by_mpi:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _open_store(host: str, port: int, launch: Launch, timeout: datetime.timedelta) -> dist.TCPStore:
    master = launch.rank == 0
    try:
        return dist.TCPStore(host, port, launch.size, is_master=master, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, OSError) as exc:
        what = "could not listen on" if master else "could not reach rank 0 at"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"backend ddp: rank {launch.rank} {what} {host}:{port} ({first}); "
                         "set MASTER_ADDR/MASTER_PORT") from None


def rendezvous_store(launch: Launch, timeout: datetime.timedelta) -> dist.TCPStore:
    """The TCPStore all ranks meet at, for launchers other than torchrun."""
    comm = None if _env_port() else _mpi_comm(launch)
    if comm is not None:
        if launch.rank == 0:
            host = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if _single_node(launch) else socket.gethostname())
            store = _open_store(host, 0, launch, timeout)
            comm.bcast((host, store.port), root=0)
            return store
        host, port = comm.bcast(None, root=0)
        return _open_store(host, port, launch, timeout)
    if launch.size == 1:   # nobody has to find us: any free port
        return _open_store("127.0.0.1", 0, launch, timeout)
    port = _env_port() or launch.master_port or derived_port(launch.job_id) or DEFAULT_PORT
    return _open_store(rendezvous_host(launch), port, launch, timeout)


def gpus_for(launch: Launch) -> int:
    """CUDA devices to use: all of them when there is one per local rank, else 0 (Gloo on the CPU;
    NCCL refuses two ranks on one GPU)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count if count >= max(launch.local_size, 1) else 0


class TorchDistBackend(Backend):
    """torch.distributed process group; gradients averaged at ``optimizer.step()`` (module docstring)."""

    name = "ddp"

    def __init__(self, launch: Launch, timeout_s: float = DEFAULT_TIMEOUT_S):
        cuda = gpus_for(launch) > 0
        device = torch.device("cpu")
        if cuda:
            device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            timeout = datetime.timedelta(seconds=timeout_s)
            pg_backend = "nccl" if cuda else "gloo"
            if launch.launcher == "torchrun":
                dist.init_process_group(pg_backend, init_method="env://", timeout=timeout)
            else:
                store = rendezvous_store(launch, timeout)
                dist.init_process_group(pg_backend, store=store, rank=launch.rank, world_size=launch.size,
                                        timeout=timeout)
        super().__init__(launch, dist.get_rank(), dist.get_world_size(), launch.local_rank, device)
        self.pg_backend = dist.get_backend()

    def describe(self) -> str:
        return super().describe() + f", process group {self.pg_backend}"

    def _allreduce_sum_(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def _broadcast_(self, tensors: list[torch.Tensor], root: int) -> None:
        for tensor in tensors:
            dist.broadcast(tensor, src=root)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj if self.rank == root else None]
        dist.broadcast_object_list(box, src=root)
        return box[0]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def shutdown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False
