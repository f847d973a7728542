"""The training loop shared by the autoencoder and the latent models.

A *loss module* is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, parts)`` for a batch
dict (the loss is a mean over the batch, so averaging gradients over workers with equal batches
equals one worker with their union; :mod:`hpcsur.learn.distributed` does the averaging).

Per epoch: optimizer steps over the worker's batches (AdamW with amsgrad, or Adam with coupled
L2 weight decay as the reference autoencoder), gradients averaged across workers by the backend;
then, as the *protocol* (:class:`FitConfig`) asks:

* ``schedule_on``: ReduceLROnPlateau steps on the validation loss (``val``), on the epoch-mean
  training loss (``train``, the reference code), or never (``none``: constant learning rate);
* ``select``: the model kept is the one with the lowest validation loss (``val_loss``), the last
  one (``last``, the reference code), or the one with the lowest ``scorer(model)`` evaluated every
  ``score_every`` epochs and at the end (``score``; e.g. rollout errors on validation trajectories,
  which need no forces).

The validation loss is computed only when the protocol uses it (its labels are force evaluations
too). Every ``snapshot_every`` epochs the model is saved to ``snapshots/epoch_NNNNN.pt`` (error-vs-
epoch curves are scored from them later), and every epoch appends a learning-curve row to
``curve.csv``.

**Checkpoint / restart.** Rank 0 writes ``checkpoint.pt`` atomically (temporary file, fsync,
rename) with the model, optimizer and scheduler states, torch's RNG state, the data cursor
(epoch, step), the running loss of the epoch, the best model and the curve -- at the end, at a
stop, and at the first epoch end ``checkpoint_minutes`` after the previous one (0: every epoch);
``best.pt`` is written with it. SIGTERM or SIGUSR1 on any worker sets a vote that travels with
the next gradient average (no extra collective), so all workers stop after the same step, write
the checkpoint and exit with :data:`EXIT_REQUEUE` (75, EX_TEMPFAIL): "stopped cleanly, resume me".
``resume=True`` restores everything and replays the epoch's data stream to the cursor, so the
final parameters equal those of an uninterrupted run.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from hpcsur.errors import InputError
from hpcsur.log import Progress
from hpcsur.provenance import code_version

log = logging.getLogger("hpcsur.train")

EXIT_REQUEUE = 75
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CURVE = "curve.csv"
DONE = "done.json"


class StopRequested(Exception):
    """Training stopped on a signal after writing a checkpoint; exit with EXIT_REQUEUE."""


SCHEDULE_ON = ("val", "train", "none")
SELECT = ("val_loss", "last", "score")
OPTIMIZERS = ("adamw_amsgrad", "adam")
SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    patience: int = 50
    factor: float = 0.5
    min_lr: float = 0.0
    checkpoint_minutes: float = 5.0
    seed: int = 0
    optimizer: str = "adamw_amsgrad"
    betas: tuple[float, float] = (0.9, 0.999)
    schedule_on: str = "val"
    select: str = "val_loss"
    score_every: int = 50
    snapshot_every: int = 0

    def __post_init__(self):
        for name, allowed in (("schedule_on", SCHEDULE_ON), ("select", SELECT), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"fit: {name} = {getattr(self, name)!r} is not allowed; choose one of: "
                                 + ", ".join(allowed))

    @property
    def needs_validation_loss(self) -> bool:
        return self.schedule_on == "val" or self.select == "val_loss"


def make_optimizer(params, config: FitConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas,
                             amsgrad=True)


class StopSignals:
    """Record SIGTERM / SIGUSR1 instead of dying; restore the previous handlers on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.raised = 0
        self._old = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def save_atomic(obj: Any, target: Path) -> None:
    """torch.save to a temporary file, fsync, then rename over ``target``."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def write_json_atomic(obj: Any, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, target)


def load_checkpoint(path: Path, meta: dict) -> dict:
    """Read a checkpoint and check it was written for the same model (one-line error otherwise).
    Only tensors and plain containers are unpickled (``weights_only``): a planted file runs no code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file
        raise InputError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {exc})") from None
    theirs = state.get("meta", {}) if isinstance(state, dict) else {}
    for key, value in meta.items():
        if theirs.get(key) != value:
            raise InputError(f"checkpoint {path}: was written for {key} = {theirs.get(key)!r}, this run has "
                             f"{value!r}; use another output folder or remove it")
    return state


def _mean_over_workers(backend, total: float, count: float) -> float:
    t = backend.allreduce(torch.tensor([total, count], dtype=torch.float64), op="sum")
    return float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")


def validation_loss(loss_module, stream, backend) -> float:
    """Frame-weighted mean loss over all validation frames of all workers (no gradients kept)."""
    if stream is None:
        return float("nan")
    total, count = 0.0, 0
    loss_module.eval()
    with torch.no_grad():
        for batch in stream.all_frames():
            batch = {k: v.to(backend.device) for k, v in batch.items()}
            n = next(iter(batch.values())).shape[0]
            loss, _ = loss_module(batch)
            total += float(loss) * n
            count += n
    loss_module.train()
    return _mean_over_workers(backend, total, count)


def fit(loss_module: torch.nn.Module, train_stream, val_stream, backend, out_dir: Path, config: FitConfig,
        meta: dict, resume: bool = False, label: str = "train", show_progress: bool = True,
        scorer: Optional[Callable[[torch.nn.Module], float]] = None, model_of=None) -> dict:
    """Train ``loss_module`` (see the module docstring); returns the summary also written to done.json.

    ``meta`` identifies the model (architecture, loss, data); a checkpoint with different meta is
    refused. ``val_stream`` is read only when the protocol needs the validation loss; ``scorer``
    (called on rank 0 with ``model_of(loss_module)``) when ``select = "score"``. Raises
    :class:`StopRequested` after checkpointing when a stop signal arrived.
    """
    out_dir = Path(out_dir)
    is_root = backend.rank == 0
    if config.select == "score" and scorer is None:
        raise InputError(f"{label}: select = 'score' needs a scorer")
    if not config.needs_validation_loss:
        val_stream = None
    if is_root:
        out_dir.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(loss_module.parameters(), config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.factor,
                                                           patience=config.patience, min_lr=config.min_lr)
    start_epoch, start_step, best, best_epoch, best_state, curve = 0, 0, float("inf"), -1, None, []
    partial = (0.0, 0)  # running (sum, count) of the train loss of an interrupted epoch
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, meta)
        loss_module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, start_step = state["epoch"], state["step"]
        best, best_state, curve = state["best"], state["best_model"], state["curve"]
        best_epoch = state.get("best_epoch", -1)   # checkpoints of older hpcsur lack it
        partial = tuple(state["partial"]) if is_root else (0.0, 0)  # the workers' sum, counted once
        log.info("%s: resuming at epoch %d, step %d", label, start_epoch, start_step)
    module, optimizer = backend.prepare(loss_module, optimizer)
    model_of = model_of or (lambda m: m)

    def checkpoint(epoch: int, step: int, running=(0.0, 0)) -> None:
        """Collective: every worker calls it; rank 0 writes (with the workers' summed running loss)."""
        summed = backend.allreduce(torch.tensor(running, dtype=torch.float64), op="sum")
        running = (float(summed[0]), int(summed[1]))
        if is_root:
            save_atomic({"meta": meta, "model": loss_module.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                         "epoch": epoch, "step": step, "partial": running, "best": best, "best_epoch": best_epoch,
                         "best_model": best_state,
                         "curve": curve, "config": asdict(config)}, ckpt_path)
            if best_state is not None:
                save_atomic({"meta": meta, "model": best_state, "val": best}, out_dir / BEST)
            _write_curve(out_dir / CURVE, curve)  # drops rows of epochs a resumed run redoes
        backend.barrier()

    def score() -> float:
        """scorer(model) on rank 0, shared with every worker (one allreduce)."""
        value = float(scorer(model_of(loss_module))) if is_root else 0.0
        value = float(backend.allreduce(torch.tensor([value], dtype=torch.float64), op="sum")[0])
        return value if math.isfinite(value) else float("inf")

    total_steps = sum(train_stream.steps(e) for e in range(config.epochs))
    progress = Progress(total_steps, unit="steps", label=label, enabled=show_progress and is_root)
    progress.resumed(sum(train_stream.steps(e) for e in range(start_epoch)) + start_step)
    t0 = last_checkpoint = time.perf_counter()
    with StopSignals() as signals:
        for epoch in range(start_epoch, config.epochs):
            module.train()
            skip = start_step if epoch == start_epoch else 0
            total, count = partial if epoch == start_epoch else (0.0, 0)
            for step, batch in enumerate(train_stream.batches(epoch, skip=skip), start=skip):
                batch = {k: v.to(backend.device) for k, v in batch.items()}
                loss, _ = module(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                backend.vote(signals.raised != 0)
                optimizer.step()
                total += float(loss.detach())
                count += 1
                progress.update()
                if backend.votes:
                    checkpoint(epoch, step + 1, (total, count))
                    log.warning("%s: stop signal: checkpoint written after epoch %d step %d", label, epoch, step)
                    raise StopRequested(f"{label}: stopped after epoch {epoch} step {step}")
            last = epoch + 1 == config.epochs
            due = is_root and (time.perf_counter() - last_checkpoint >= 60.0 * config.checkpoint_minutes)
            sums = backend.allreduce(torch.tensor([total, count, float(due)], dtype=torch.float64), op="sum")
            train_loss = float(sums[0] / sums[1]) if float(sums[1]) > 0 else float("nan")
            val = validation_loss(loss_module, val_stream, backend)
            if config.schedule_on == "val" and val_stream is not None:
                scheduler.step(val)
            elif config.schedule_on != "none":
                scheduler.step(train_loss)
            scored = float("nan")
            if config.select == "score" and ((epoch + 1) % config.score_every == 0 or last):
                scored = score()
            candidate = {"val_loss": val if val_stream is not None else train_loss, "score": scored,
                         "last": -float(epoch)}[config.select]   # nan (no score this epoch) never wins
            if candidate < best:
                best, best_epoch = candidate, epoch
                best_state = {k: v.detach().clone() for k, v in loss_module.state_dict().items()}
            curve.append({"epoch": epoch, "train": train_loss, "val": val, "score": scored,
                          "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
            if is_root:
                _append_curve(out_dir / CURVE, curve[-1])
                if config.snapshot_every and (epoch + 1) % config.snapshot_every == 0:
                    (out_dir / SNAPSHOTS).mkdir(exist_ok=True)
                    save_atomic({"meta": meta, "epoch": epoch + 1, "model": loss_module.state_dict()},
                                out_dir / SNAPSHOTS / snapshot_name(epoch + 1))
            if float(sums[2]) > 0 or last:
                checkpoint(epoch + 1, 0)
                last_checkpoint = time.perf_counter()
    progress.close()
    summary = {"label": label, "epochs": config.epochs, "best_epoch": best_epoch,
               "best": best if config.select != "last" else None, "select": config.select,
               "schedule_on": config.schedule_on,
               "final_train": curve[-1]["train"] if curve else float("nan"),
               "seconds": time.perf_counter() - t0, "workers": backend.size, "backend": backend.name,
               "code": code_version()}
    if is_root:
        write_json_atomic(summary, out_dir / DONE)
    backend.barrier()
    return summary


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch:05d}.pt"


def load_snapshots(out_dir: Path, meta: dict) -> list[tuple[int, dict]]:
    """(epoch, state dict) of every snapshot of a run, in epoch order."""
    folder = Path(out_dir) / SNAPSHOTS
    out = []
    for path in sorted(folder.glob("epoch_*.pt")) if folder.exists() else []:
        state = load_checkpoint(path, meta)
        out.append((int(state["epoch"]), state["model"]))
    return out


def _append_curve(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_curve(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def load_best(out_dir: Path, meta: dict) -> dict:
    """The best model's state dict of a finished run (one-line error if missing or foreign)."""
    path = Path(out_dir) / BEST
    if not path.exists():
        raise InputError(f"{path}: no trained model; run the training stage first")
    return load_checkpoint(path, meta)["model"]
