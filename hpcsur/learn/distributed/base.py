"""The backend interface, and the parts every backend shares: state broadcast and gradient averaging.

A backend implements four collectives (:meth:`Backend._allreduce_sum_`, :meth:`Backend._broadcast_`,
:meth:`Backend.broadcast_object`, :meth:`Backend.barrier`); everything the trainer calls on top of
them (``allreduce``, ``prepare``, ``broadcast_state``, ``sync_gradients``) is written once here, so
the backends cannot drift apart in what they mean.

**Gradient averaging.** :meth:`Backend.prepare` registers a step pre-hook on the optimizer: before
each ``optimizer.step()`` the gradients of every parameter the optimizer steps are packed into one
flat buffer per (dtype, device), summed over workers in one allreduce and divided by the number of
workers. A parameter whose gradient is ``None`` on some workers gets the average with zeros there;
one whose gradient is ``None`` on every worker stays ``None`` (so AdamW skips it, exactly as it would
in one process with the whole batch). With losses that are means over equal-size local batches this
makes ``W`` workers x batch ``B`` the same update as 1 worker x batch ``W B``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Optional

import torch

from hpcsur.errors import InputError
from hpcsur.log import Launch

OPS = ("mean", "sum")
LR_RULES = ("none", "linear", "sqrt")
_SYNC_ATTR = "_hpcsur_gradient_sync"


def scaled_lr(lr: float, size: int, rule: str = "none") -> float:
    """The learning rate for ``size`` workers: unchanged (``none``), ``lr*size`` or ``lr*sqrt(size)``."""
    if rule not in LR_RULES:
        raise InputError(f"lr_scaling {rule!r} is unknown; allowed: {', '.join(LR_RULES)}")
    if size < 1:
        raise InputError(f"lr scaling: number of workers must be >= 1, got {size}")
    return {"none": lr, "linear": lr * size, "sqrt": lr * math.sqrt(size)}[rule]


class Backend:
    """One data-parallel worker among ``size``; see the package docstring for the contract."""

    name = "base"

    def __init__(self, launch: Launch, rank: int, size: int, local_rank: int,
                 device: torch.device = torch.device("cpu")):
        self.launch = launch
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.device = device
        self._vote, self.votes = 0.0, 0.0  # see vote()

    # ------------------------------------------------------------------ collectives (per backend)

    def _allreduce_sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over workers, in place."""
        raise NotImplementedError

    def _broadcast_(self, tensors: list[torch.Tensor], root: int) -> None:
        """Overwrite each tensor with root's, in place."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Root's ``obj`` (picklable) on every worker; what non-root workers pass is ignored."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every worker has reached this point."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Leave the process group; the backend is unusable afterwards. Safe to call twice."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"backend {self.name}: {self.size} worker(s), launched by {self.launch.launcher}, device {self.device}"

    def allreduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """A new tensor holding the sum or the mean of ``tensor`` over workers (input untouched).

        The mean is the sum divided by ``size``, so integer inputs give a floating-point mean.
        The result lives on the input's device, whatever device the collective needs.
        """
        if op not in OPS:
            raise InputError(f"allreduce op {op!r} is unknown; allowed: {', '.join(OPS)}")
        out = tensor.detach().to(self.device, copy=True)
        if self.size > 1:
            self._allreduce_sum_(out)
        if op == "mean":
            out = out / self.size
        return out.to(tensor.device)

    def broadcast_state(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                        root: int = 0) -> None:
        """Make every worker's parameters, buffers and optimizer state (hyper-parameters included)
        equal to ``root``'s."""
        if self.size == 1:
            return
        with torch.no_grad():
            self._broadcast_(list(model.state_dict().values()), root)
        if optimizer is not None:
            state = self.broadcast_object(_to_cpu(optimizer.state_dict()) if self.rank == root else None, root)
            if self.rank != root:
                optimizer.load_state_dict(state)

    def vote(self, value: bool) -> None:
        """This worker's vote, carried by the next gradient average (no extra collective); after
        that ``optimizer.step()``, :attr:`votes` is the number of workers that voted (e.g. to stop
        on a signal at the same step everywhere). With one worker ``votes`` is the vote itself."""
        self._vote = float(bool(value))
        if self.size == 1:
            self.votes = self._vote

    def prepare(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None):
        """Ready ``model`` and ``optimizer`` for data-parallel training; returns ``(model, optimizer)``.

        Moves the model to :attr:`device`, broadcasts parameters, buffers and optimizer state from
        rank 0, and makes ``optimizer.step()`` average the gradients over workers first. The objects
        returned are the ones passed in (no wrapper), so LR schedulers and ``state_dict()`` keep
        working on them.
        """
        model = model.to(self.device)
        self.broadcast_state(model, optimizer, root=0)
        if optimizer is not None and self.size > 1 and not hasattr(optimizer, _SYNC_ATTR):
            setattr(optimizer, _SYNC_ATTR, _GradientSync(self, optimizer))
        return model, optimizer

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the gradients now (e.g. before clipping them); the next ``step()`` will not redo it."""
        sync = getattr(optimizer, _SYNC_ATTR, None)
        if sync is not None:
            sync()
        elif self.size > 1:
            raise InputError(f"backend {self.name}: sync_gradients on an optimizer that prepare() has not seen")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank}/{self.size} local {self.local_rank} on {self.device}>"


class _GradientSync:
    """Averages an optimizer's gradients over workers once per ``step()`` (see the module docstring)."""

    def __init__(self, backend: Backend, optimizer: torch.optim.Optimizer):
        self.backend, self.optimizer = backend, optimizer
        self.done = False
        self.handles = (optimizer.register_step_pre_hook(self._before_step),
                        optimizer.register_step_post_hook(self._after_step))

    def __call__(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        average_gradients(params, self.backend)
        self.done = True

    def _before_step(self, optimizer, args, kwargs) -> None:
        if kwargs.get("closure") is not None or len(args) > 1:
            raise InputError(f"backend {self.backend.name}: optimizer.step(closure) is not supported in "
                             "data-parallel training; call backward() yourself, then step()")
        if not self.done:
            self()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.done = False


def average_gradients(params: list[torch.nn.Parameter], backend: Backend) -> None:
    """Replace each ``p.grad`` by its mean over workers (``None`` where it is ``None`` everywhere)."""
    groups: dict[tuple, list[torch.nn.Parameter]] = defaultdict(list)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise InputError(f"backend {backend.name}: sparse gradients are not supported")
        groups[(p.dtype, p.device)].append(p)
    for i, ((dtype, device), group) in enumerate(groups.items()):
        vote = [backend._vote] if i == 0 else []   # the vote rides with the first group
        flat = torch.cat([p.grad.detach().reshape(-1) if p.grad is not None
                          else torch.zeros(p.numel(), dtype=dtype, device=device) for p in group]
                         + [torch.tensor([float(p.grad is not None) for p in group] + vote, dtype=dtype,
                                         device=device)])
        flat = flat.to(backend.device)
        backend._allreduce_sum_(flat)
        if vote:
            backend.votes = float(flat[-1])
            flat = flat[:-1]
        flat = (flat / backend.size).to(device)
        offset, present = 0, flat[-len(group):] > 0
        for p, has in zip(group, present.tolist()):
            chunk = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is not None:
                p.grad.copy_(chunk)
            elif has:
                p.grad = chunk.clone()


def _to_cpu(obj: Any) -> Any:
    """Tensors inside nested dicts/lists/tuples moved to the CPU (for pickled broadcasts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
