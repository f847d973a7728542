"""The pipeline's stages, once: what each runs, how it is launched, and the one ``--stages`` grammar.

``hpcsur run`` (local processes), ``hpcsur submit`` (Slurm batch jobs), ``hpcsur scale`` (points of a
scaling study) and ``hpcsur campaign`` (ensemble members) all take their stages, command lines and
launchers from here:

=============  =========================  =========  ======================================
stage          command                    tasks      launched as
=============  =========================  =========  ======================================
generate       hpcsur generate JOB        ranks      ``mpiexec -n R`` / ``srun`` (MPI)
verify         hpcsur store verify STORE  one        one process
train-ae       hpcsur train-ae JOB        workers    W > 1: ``mpiexec -n W`` / ``srun``
encode         hpcsur encode JOB          ranks      ``mpiexec -n R`` / ``srun`` (MPI)
train-latent   hpcsur train-latent JOB    workers    W > 1: ``mpiexec -n W`` / ``srun``
evaluate       hpcsur evaluate JOB        one        one process
=============  =========================  =========  ======================================

Stages that take ``--resume`` continue where an earlier (killed, requeued) run stopped. ``verify`` is
optional (``hpcsur submit`` only); :data:`PIPELINE` is the default chain.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from hpcsur.errors import InputError


# ----------------------------------------------------------------------------- a stage's outputs, and are they complete?
def encoded_path(spec) -> str:
    """The encoded store of a job: the encode stage's output ``<run_dir>/encoded``, or for an in-situ job
    (``[insitu]``) the store generate writes, ``[store] path``."""
    if getattr(spec, "insitu", None) is not None:
        return spec.store.path
    return str(Path(spec.run_dir) / "encoded")


def _store_done(path: str) -> bool:
    from hpcsur import store

    return store.progress(path).complete


def _latent_done_files(spec) -> list[Path]:
    from hpcsur.learn.stages import run_name

    return [Path(spec.run_dir) / "latent" / run_name(loss, size, seed) / "done.json"
            for loss, size, seed in spec.latent.models()]


def generate_done(spec) -> bool:
    return _store_done(spec.store.path)


def train_ae_done(spec) -> bool:
    """The job's autoencoder is trained (an in-situ job's: that of its [insitu] autoencoder job)."""
    if getattr(spec, "insitu", None) is not None:
        from hpcsur.ops.jobspec import load_job

        spec = load_job(spec.insitu.autoencoder)
    return (Path(spec.run_dir) / "autoencoder" / "done.json").exists()


def encode_done(spec) -> bool:
    return _store_done(encoded_path(spec))


def train_latent_done(spec) -> bool:
    return all(f.exists() for f in _latent_done_files(spec))


def evaluate_done(spec) -> bool:
    """The report exists and is newer than every trained model."""
    report, done = Path(spec.run_dir) / "report.json", _latent_done_files(spec)
    return (report.exists() and all(f.exists() for f in done)
            and report.stat().st_mtime >= max(f.stat().st_mtime for f in done))


def never_done(spec) -> bool:
    return False


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the hpcsur subcommand it runs, how it is launched, and when its outputs are
    complete (``done(spec)``: ``hpcsur run`` skips it then)."""

    name: str
    command: tuple[str, ...]   # hpcsur subcommand words
    tasks: str                 # "ranks" (MPI ranks), "workers" ([train] workers) or "one"
    resume: bool               # takes --resume (a requeued job continues)
    target: str = "job"        # its argument: "job" (the spec file) or "store" (the store path)
    backend: bool = False      # takes --backend (data-parallel training)
    done: Callable[[object], bool] = never_done

    def argv(self, hpcsur: Sequence[str], job_path: str, store_path: str = "") -> list[str]:
        """The stage's command line, without a launcher."""
        target = job_path if self.target == "job" else store_path
        return [*hpcsur, *self.command, target, *(["--resume"] if self.resume else [])]

    def processes(self, ranks: int, workers: int) -> int:
        """How many processes the stage runs as."""
        return {"ranks": ranks, "workers": workers, "one": 1}[self.tasks]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("generate", ("generate",), "ranks", resume=True, done=generate_done),
    Stage("verify", ("store", "verify"), "one", resume=False, target="store"),
    Stage("train-ae", ("train-ae",), "workers", resume=True, backend=True, done=train_ae_done),
    Stage("encode", ("encode",), "ranks", resume=True, done=encode_done),
    Stage("train-latent", ("train-latent",), "workers", resume=True, backend=True, done=train_latent_done),
    Stage("evaluate", ("evaluate",), "one", resume=False, done=evaluate_done),
)}
#: Every stage in the order stages run.
ORDER = tuple(STAGES)
#: The default chain (``verify`` is optional, after ``generate``).
PIPELINE = tuple(name for name in ORDER if name != "verify")


def parse_stages(text: Optional[str], allowed: Sequence[str] = ORDER) -> tuple[str, ...]:
    """The one ``--stages`` grammar: ``"generate, train-ae"`` -> ``("generate", "train-ae")``.

    Comma-separated names of stages from ``allowed``, each once, in the order stages run; every
    mistake is one line naming the allowed stages."""
    choices = ", ".join(allowed)
    names = tuple(part.strip() for part in (text or "").split(","))
    if not (text or "").strip() or not all(names):
        raise InputError(f"--stages {text!r}: give a comma-separated list of: {choices}")
    for name in names:
        if name not in allowed:
            raise InputError(f"--stages: unknown stage {name!r}; choose from: {choices}")
    if len(set(names)) != len(names):
        raise InputError(f"--stages {text!r} names a stage twice")
    if list(names) != sorted(names, key=ORDER.index):
        raise InputError(f"--stages {text!r} is out of order; stages run in the order {choices}")
    return names


# ----------------------------------------------------------------------------- launchers
def venv_program(name: str) -> Optional[str]:
    """``name`` next to this Python (the venv's own ``hpcsur``, ``mpiexec``), else on PATH, else None."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def find_mpiexec(configured: Optional[str] = None) -> str:
    """The MPI launcher: ``configured`` (``[slurm] mpiexec``), else the venv's (the MPICH mpi4py is built
    against), else the first on PATH; one line when there is none."""
    found = configured or venv_program("mpiexec")
    if not found:
        raise InputError("mpiexec: not found next to this Python nor on PATH (install the `mpich` extra, "
                         "or set [slurm] mpiexec)")
    return found


def hpcsur_command() -> list[str]:
    """This installation's ``hpcsur`` entry point (or ``python -m hpcsur.cli.main`` without one)."""
    exe = Path(sys.executable).parent / "hpcsur"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcsur.cli.main"]


def mpi_launch(processes: int, mpiexec: str) -> list[str]:
    """The local launcher words: ``mpiexec -n P`` for several processes, nothing for one."""
    return [mpiexec, "-n", str(processes)] if processes > 1 else []


def stage_command(stage: str, job: str, ranks: int, workers: int, *, backend: Optional[str] = None,
                  store_path: str = "", hpcsur: Optional[Sequence[str]] = None,
                  mpiexec: Optional[str] = None, extra: Iterable[str] = ()) -> list[str]:
    """A stage's whole local command line: launcher, entry point, subcommand and arguments."""
    s = STAGES[stage]
    argv = s.argv(hpcsur or hpcsur_command(), job, store_path)
    if backend and s.backend:
        argv += ["--backend", backend]
    argv += list(extra)
    n = s.processes(ranks, workers)
    return [*mpi_launch(n, mpiexec or find_mpiexec()), *argv] if n > 1 else argv
