"""The ``horovod`` backend: ``horovod.torch`` collectives (MPI or Gloo underneath).

Built by ``make horovod`` (Horovod 0.28.1 patched to C++17, against this venv's torch and MPICH).
Launch it with ``mpiexec -n N python ...`` (``horovodrun --mpi`` does not recognise MPICH 5) or
``horovodrun --gloo``; under ``torchrun`` ``hvd.init()`` would see a world of one per process, so
that combination is refused.

Gradients are averaged by the shared step hook of :mod:`hpcsur.learn.distributed.base` with one
``hvd.allreduce_`` per step, not by ``hvd.DistributedOptimizer``: that one builds a *new* optimizer
(an LR scheduler made on the old one keeps its own state, and state loaded into the old one before
``prepare`` is left behind), and it submits zeros for a parameter whose gradient is ``None``
everywhere, so AdamW's weight decay then moves a parameter that one process would leave alone
(measured: V's output bias off by 1.1e-3 after 20 AdamW steps, every other parameter to 2e-16).
Both backends therefore mean exactly the same thing. Parameter and optimizer-state broadcast do not
use ``hvd.broadcast_optimizer_state`` either: with an empty state it takes an optimizer step with zero
gradients to create one, which advances Adam's step counter and breaks "2 workers x B = 1 x 2B".
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

import torch

from hpcsur.errors import InputError
from hpcsur.learn.distributed.base import Backend
from hpcsur.log import Launch

NOT_INSTALLED = 'horovod is not installed; run `make horovod` or use backend = "ddp"'


def horovod_problem() -> Optional[str]:
    """Why the horovod backend cannot be used here (one line), or ``None`` when it can."""
    if importlib.util.find_spec("horovod") is None:
        return NOT_INSTALLED
    try:
        import horovod.torch as hvd
    except Exception as exc:  # a wheel built for another torch / venv fails here, not at find_spec
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"horovod does not import ({type(exc).__name__}: {first}); rerun `make horovod` or use backend = \"ddp\""
    if not (hvd.mpi_built() or hvd.gloo_built()):
        return 'horovod has neither MPI nor Gloo built in; rerun `make horovod` or use backend = "ddp"'
    return None


class HorovodBackend(Backend):
    """``hvd.init()`` and Horovod's collectives; the device is the CPU (the build has no GPU ops)."""

    name = "horovod"

    def __init__(self, launch: Launch):
        problem = horovod_problem()
        if problem is not None:
            raise InputError(f"backend horovod: {problem}")
        import horovod.torch as hvd

        self.hvd = hvd
        if launch.launcher == "mpich":
            # Horovod's background thread polls MPI: with MPICH's default busy waiting it keeps a
            # core spinning even when idle, which on CPU nodes steals the core of a training
            # worker. Yielding waits (read at MPI_Init) give the core back; the user's setting wins.
            os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
            # HOROVOD_CYCLE_TIME stays at Horovod's 1 ms: 0.1 ms cut a bare 28 k-float allreduce from
            # 1.07 to 0.29 ms but slowed real epochs by ~25 % (the background thread wakes 10x more often).
        hvd.init()
        if launch.parallel and hvd.size() != launch.size:
            size = hvd.size()
            hvd.shutdown()
            raise InputError(f"backend horovod: Horovod sees {size} process(es) but {launch.launcher} started "
                             f"{launch.size}; launch with mpiexec or horovodrun, or use backend = \"ddp\"")
        super().__init__(launch, hvd.rank(), hvd.size(), hvd.local_rank(), torch.device("cpu"))
        self._alive = True
        self._objects = 0

    def describe(self) -> str:
        controller = "MPI" if self.hvd.mpi_enabled() else "Gloo"
        return super().describe() + f", controller {controller}"

    def _allreduce_sum_(self, tensor: torch.Tensor) -> None:
        # A stable name per shape (the call is synchronous, so names never overlap): Horovod's
        # default names count up, which fills its response cache and makes it warn on every eviction.
        name = f"hpcsur.allreduce.{str(tensor.dtype).removeprefix('torch.')}.{'x'.join(map(str, tensor.shape))}"
        self.hvd.allreduce_(tensor, op=self.hvd.Sum, name=name)

    def _broadcast_(self, tensors: list[torch.Tensor], root: int) -> None:
        self.hvd.broadcast_parameters({f"t{i}": t for i, t in enumerate(tensors)}, root_rank=root)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        # An explicit name: Horovod's default is the object's type name, which differs between
        # root (e.g. dict) and the others (None), and the ranks then wait for each other forever.
        self._objects += 1
        return self.hvd.broadcast_object(obj if self.rank == root else None, root_rank=root,
                                         name=f"hpcsur.object.{self._objects}")

    def barrier(self) -> None:
        self.hvd.barrier()

    def shutdown(self) -> None:
        if self._alive:
            self.hvd.shutdown()
            self._alive = False
