"""The ``none`` backend: one process, every collective is the identity."""
from __future__ import annotations

from typing import Any

import torch

from hpcsur.learn.distributed.base import Backend
from hpcsur.log import Launch


class LocalBackend(Backend):
    """Single-process training: rank 0 of 1; the device is ``cuda`` when available, else the CPU
    (``prepare`` only moves the model there)."""

    name = "none"

    def __init__(self, launch: Launch):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(launch, rank=0, size=1, local_rank=0, device=device)

    def _allreduce_sum_(self, tensor: torch.Tensor) -> None:
        pass

    def _broadcast_(self, tensors: list[torch.Tensor], root: int) -> None:
        pass

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
