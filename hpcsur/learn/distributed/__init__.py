"""Data-parallel training backends: one small interface, three implementations.

::

    from hpcsur.learn.distributed import init_backend, scaled_lr

    backend = init_backend("auto")            # or "horovod", "ddp", "none"
    backend.name, backend.rank, backend.size, backend.local_rank, backend.device, backend.is_root
    model, optimizer = backend.prepare(model, optimizer)   # same objects back, ready to train
    for batch in my_shard_of_the_data:
        loss = model(batch)                  # a mean over this worker's batch
        optimizer.zero_grad(); loss.backward(); optimizer.step()   # step() averages gradients first
    total = backend.allreduce(torch.tensor([s, n]), op="sum")    # or op="mean"; a new tensor
    backend.broadcast_state(model, optimizer, root=0)  # parameters, buffers, optimizer state
    config = backend.broadcast_object(config, root=0); backend.barrier(); backend.shutdown()
    backend.vote(stop_wanted); optimizer.step(); backend.votes   # how many workers voted, at no extra cost
    lr = scaled_lr(1e-3, backend.size, "sqrt")         # "none" | "linear" | "sqrt"

**Contract.** After ``loss.backward()`` + ``optimizer.step()`` every worker has applied the
*average* of the workers' gradients, so with losses that are means over equal-size local batches,
W workers x batch B take the same steps as 1 worker x batch W*B. This holds for models that call
``torch.autograd.grad(..., create_graph=True)`` inside ``forward`` (OnsagerNet, GFINNs), for several
forward calls per step, for parameters without a gradient, and for gradient accumulation over
several ``backward()`` calls. ``prepare`` returns the objects it was given (no wrapper): LR schedulers
made before or after it, ``state_dict()`` and checkpoints work on them unchanged. To clip averaged
gradients call ``backend.sync_gradients(optimizer)`` before clipping; ``step()`` then skips its own
averaging. Not supported: ``optimizer.step(closure)`` (a one-line error), sparse gradients.
Buffers (e.g. BatchNorm statistics) are broadcast by ``prepare``/``broadcast_state`` but not kept
in sync afterwards.

**Backends.**

- ``none``: one process (:class:`~hpcsur.learn.distributed.local.LocalBackend`), on ``cuda`` when
  available.
- ``ddp``: torch.distributed, Gloo on CPU, NCCL when there is a GPU per local rank
  (``backend.device`` is then ``cuda:<local_rank>``: put batches there; ``prepare`` moves the
  model, ``allreduce`` takes tensors from any device); gradients averaged at ``step()`` rather than by the
  ``DistributedDataParallel`` wrapper, which mis-synchronises potential-gradient models
  (:mod:`~hpcsur.learn.distributed.torch_dist` has the evidence and the rendezvous rules).
- ``horovod``: ``horovod.torch`` (``make horovod`` builds it; :mod:`~hpcsur.learn.distributed.hvd`).
- ``auto``: ``none`` when not launched in parallel; Horovod when it imports and the launcher was
  mpiexec/mpirun or horovodrun; otherwise ``ddp`` (torchrun, srun — under srun ask for
  ``horovod`` explicitly if your Horovod's MPI supports Slurm's PMI).

**Launch.** Rank, size and local rank come from the launcher's environment
(:func:`hpcsur.log.detect_launch`): ``mpiexec -n 2 python train.py``, ``mpirun``,
``srun -n 2 python train.py``, ``torchrun --nproc-per-node 2 train.py``, ``horovodrun --gloo``.

Imports: torch and the standard library; mpi4py (ddp under mpiexec) and horovod only when used.
"""
from __future__ import annotations

import logging
from typing import Optional

from hpcsur.errors import InputError
from hpcsur.learn.distributed.base import LR_RULES, OPS, Backend, average_gradients, scaled_lr
from hpcsur.log import Launch, detect_launch

__all__ = ["BACKENDS", "LR_RULES", "OPS", "Backend", "average_gradients", "choose_backend",
           "init_backend", "scaled_lr"]

BACKENDS = ("auto", "horovod", "ddp", "none")
HOROVOD_LAUNCHERS = ("mpich", "openmpi", "horovodrun")

log = logging.getLogger("hpcsur.learn.distributed")


def choose_backend(requested: str, launch: Launch, horovod_problem: Optional[str]) -> str:
    """The backend to start: ``requested`` with ``auto`` resolved (see the module docstring).

    ``horovod_problem`` is why Horovod cannot be used here, or ``None`` when it can. Pure: raises
    :class:`InputError` (one line) for an unknown name, or for Horovod where it cannot work.
    """
    if requested not in BACKENDS:
        raise InputError(f"backend {requested!r} is unknown; allowed: {', '.join(BACKENDS)}")
    if requested == "auto":
        if not launch.parallel:
            return "none"
        if horovod_problem is None and launch.launcher in HOROVOD_LAUNCHERS:
            return "horovod"
        return "ddp"
    if requested == "horovod":
        if horovod_problem is not None:
            raise InputError(f"backend horovod: {horovod_problem}")
        if launch.launcher == "torchrun":
            raise InputError('backend horovod: torchrun does not start Horovod\'s MPI or Gloo; launch with '
                             '`mpiexec -n N` or horovodrun, or use backend = "ddp"')
    return requested


def _horovod_problem_if_relevant(requested: str, launch: Launch) -> Optional[str]:
    """Import horovod only where the choice depends on it (it takes a second)."""
    if requested == "horovod" or (requested == "auto" and launch.parallel and launch.launcher in HOROVOD_LAUNCHERS):
        from hpcsur.learn.distributed.hvd import horovod_problem
        return horovod_problem()
    return "not needed"


def init_backend(name: str = "auto", *, timeout_s: Optional[float] = None,
                 launch: Optional[Launch] = None) -> Backend:
    """Start the backend ``name`` (one of :data:`BACKENDS`) for this process and return it.

    ``launch`` defaults to :func:`hpcsur.log.detect_launch` of this process's environment;
    ``timeout_s`` bounds the ddp rendezvous and its collectives (default 600 s).
    """
    launch = detect_launch() if launch is None else launch
    problem = _horovod_problem_if_relevant(name, launch)
    chosen = choose_backend(name, launch, problem)
    if name == "auto" and chosen == "ddp" and problem not in (None, "not needed"):
        log.info("auto: not using horovod (%s)", problem)
    if chosen == "none":
        if launch.parallel:
            log.warning("backend none under a %d-rank %s launch: every rank trains alone",
                        launch.size, launch.launcher)
        from hpcsur.learn.distributed.local import LocalBackend
        backend: Backend = LocalBackend(launch)
    elif chosen == "ddp":
        from hpcsur.learn.distributed.torch_dist import DEFAULT_TIMEOUT_S, TorchDistBackend
        backend = TorchDistBackend(launch, DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
    else:
        from hpcsur.learn.distributed.hvd import HorovodBackend
        backend = HorovodBackend(launch)
    log.info("%s", backend.describe())
    return backend
