"""``hpcsur run``: the whole chain on this machine, one subprocess per stage, resuming finished stages.

    generate      mpiexec -n R hpcsur generate JOB --resume        (MPI on the loopback interface)
    train-ae      mpiexec -n W hpcsur train-ae JOB --resume       (W = [train] workers)
    encode        mpiexec -n R hpcsur encode JOB --resume
    train-latent  mpiexec -n W hpcsur train-latent JOB --resume
    evaluate      hpcsur evaluate JOB

A stage whose outputs are complete is skipped (evaluate: when report.json is newer than every
trained model) (its own ``--resume`` would also find nothing to do,
but skipping saves the start-up). A stage whose outputs were made from other spec fields
(:mod:`hpcsur.ops.provenance`) is redone, and so is every stage after it; ``keep=True`` refuses
instead, naming the changed fields. Each stage runs in its own process group of ranks so MPI,
numba and torch state never leak between stages; the same commands are what ``hpcsur submit``
puts in sbatch scripts. Every attempt's wall and CPU time goes to ``<run_dir>/stage_times.jsonl``
(:mod:`hpcsur.ops.wall_time`); the results file sums them by stage.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcsur.errors import InputError
from hpcsur.log import loopback_env
from hpcsur.ops.jobspec import JobSpec
from hpcsur.ops import stage_table
from hpcsur.ops.stage_table import PIPELINE
from hpcsur.ops.wall_time import forget_stage, record_attempt

log = logging.getLogger("hpcsur.run")

STAGES = PIPELINE


def stage_done(spec: JobSpec, stage: str) -> bool:
    """True when ``stage``'s outputs are complete (the stage table's check)."""
    return stage_table.STAGES[stage].done(spec)


def stage_command(job: str, stage: str, ranks: int, workers: int, backend: str | None = None) -> list[str]:
    """The command line of one stage (the venv's own launcher and entry point; :mod:`hpcsur.ops.stage_table`)."""
    return stage_table.stage_command(stage, job, ranks, workers, backend=backend)


def redo_stale(spec: JobSpec, chosen: list[str], keep: bool) -> None:
    """Remove the outputs of stale stages, and all outputs built on a redone generate / train-ae /
    encode (or, with ``keep``, refuse in one line). A stale stage outside ``chosen`` is an error."""
    from hpcsur.ops import provenance

    redo = False
    for stage in STAGES:
        fields = provenance.stale(spec, stage)
        if fields:
            if stage not in chosen:
                raise InputError(f"--stages: {stage} is stale ({provenance.short(fields)}) and not among the "
                                 "chosen stages; include it (or run without --stages)")
            if keep:
                raise InputError(f"{stage}: its outputs were made from other spec fields "
                                 f"({provenance.short(fields)}); rerun without --keep to redo {stage} and the "
                                 "stages after it")
            print(f"[run] {stage}: inputs changed ({provenance.short(fields)}): redoing it", flush=True)
        elif not redo and provenance.unrecorded(spec, stage):
            print(f"[run] {stage}: outputs without a provenance record (an older hpcsur): kept as they are", flush=True)
        if fields or redo:
            gone = provenance.clear(spec, stage, only_stale_runs=not redo)
            for path in gone:
                print(f"[run]   removed {path}", flush=True)
            if gone and (redo or stage != "train-latent"):    # redone from scratch: its wall time starts over
                forget_stage(spec.run_dir, stage)
        redo = redo or (bool(fields) and stage in ("generate", "train-ae", "encode"))


EXIT_STOPPED = 75   # EX_TEMPFAIL, as a training stage stopped by a signal: "resume me"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_stage(cmd: list[str], grace: float = 120.0) -> tuple[int, int]:
    """Run one stage in a process group of its own; returns (exit code, signal that stopped us or 0).

    SIGTERM / SIGINT / SIGHUP to ``hpcsur run`` (Ctrl-C, ``kill``, ``scancel``, a campaign worker
    going away) are forwarded to the whole group -- mpiexec, its proxies and every rank -- which
    then stop as they do on their own signals (training checkpoints and exits 75, generation
    leaves completed shards); after ``grace`` seconds the group is killed. Nothing outlives us.
    """
    received = []

    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass

    proc = subprocess.Popen(cmd, start_new_session=True, env=loopback_env(os.environ))
    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        deadline = None
        while True:
            try:
                code = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
        try:  # stragglers of the group (a rank that ignored the signal)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code, (received[0] if received else 0)


def run_pipeline(spec: JobSpec, job: str, ranks: int = 2, workers: int | None = None, backend: str | None = None,
                 stages: list[str] | None = None, keep: bool = False) -> int:
    """Run (or resume) the chain; returns the first non-zero exit code, or 0."""
    spec.require("autoencoder", "run")
    spec.require("latent", "run")
    workers = workers or spec.train.workers
    chosen = list(stages or STAGES)
    stage_table.parse_stages(",".join(chosen), STAGES)   # the --stages grammar also for callers in Python
    redo_stale(spec, chosen, keep)
    t_all = time.perf_counter()
    for stage in STAGES:
        if stage not in chosen:
            continue
        if stage_done(spec, stage):
            print(f"[run] {stage}: complete, skipped", flush=True)
            if stage == "evaluate":
                _print_report(spec)
            continue
        cmd = stage_command(job, stage, ranks, workers, backend)
        print(f"[run] {stage}: {' '.join(Path(c).name if i < 3 and '/' in c else c for i, c in enumerate(cmd))}",
              flush=True)
        t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
        code, stopped_by = run_stage(cmd)
        seconds = time.perf_counter() - t0
        record_attempt(spec.run_dir, stage, seconds, _children_cpu_seconds() - cpu0, code,
                       int(cmd[cmd.index("-n") + 1]) if "-n" in cmd else 1)
        print(f"[run] {stage}: exit {code} after {seconds:.0f} s", flush=True)
        if stopped_by:
            print(f"[run] stopped by {signal.Signals(stopped_by).name} during {stage}; every stage process has ended "
                  "and the state on disk is resumable: rerun `hpcsur run` to continue", file=sys.stderr, flush=True)
            return EXIT_STOPPED
        if code != 0:
            print(f"[run] stopped: stage {stage} failed (exit {code}); fix it and rerun `hpcsur run` to resume",
                  file=sys.stderr, flush=True)
            return code
    print(f"[run] all stages done in {time.perf_counter() - t_all:.0f} s", flush=True)
    return 0


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every waited-for descendant so far (ranks included: mpiexec and its proxies
    wait for theirs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _print_report(spec: JobSpec) -> None:
    import json

    from hpcsur.ops.stages import format_table

    report = json.loads((Path(spec.run_dir) / "report.json").read_text())
    print(format_table(report))
    print(f"report: {Path(spec.run_dir) / 'report.json'}")
    results = Path(spec.output.results) / f"{spec.name}.json"
    if results.exists():
        print(f"results: {results}")
    for name, path in report["plots"].items():
        print(f"plot ({name}): {path}")
