"""Scaling studies, running them: points as local process groups or Slurm jobs, and ``run_scale`` (the command)."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from hpcsur.errors import InputError
from hpcsur.log import log_tail
from hpcsur.measure import Timed, load
from hpcsur.ops.jobspec import dump_job
from hpcsur.ops.scale.model import (TRAINING_TERMS, autoencoder_parameter_bytes, extrapolate,
                                    fit_model, generation_terms, point_counts)
from hpcsur.ops.scale.plan import Point, ScalePlan, log, measured_steps, training_frames
from hpcsur.ops.scale.report import build_rows, format_model, format_table, write_outputs


# ============================================================================ running points (side effects)
class PointFailed(Exception):
    """A point's stage exited non-zero (or its outputs are missing)."""


def _subprocess_env() -> dict:
    from hpcsur.log import loopback_env

    env = loopback_env(os.environ)   # the local runner: every rank on this machine
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")  # one core per rank: P ranks use P cores
    return env


def launch_command(point: Point, backend: Optional[str] = None) -> list[str]:
    """The point's command line: ``hpcsur run``'s (:func:`hpcsur.ops.pipeline.stage_command`), no progress line."""
    from hpcsur.ops.pipeline import stage_command

    return stage_command(point.spec_path, point.stage, point.ranks, point.ranks, backend) + ["--no-progress"]


def write_point(point: Point) -> None:
    Path(point.directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(point.spec_path + ".tmp")
    tmp.write_text(dump_job(point.spec))
    tmp.replace(point.spec_path)


def run_local(point: Point, backend: Optional[str] = None) -> dict:
    """Run one point as a subprocess; returns what :func:`collect` reads, plus wall time and load."""
    write_point(point)
    cmd = launch_command(point, backend)
    out, err = Path(point.directory) / "stdout.log", Path(point.directory) / "stderr.log"
    log.info("%s: %s", point.name, " ".join(Path(c).name if i < 3 and "/" in c else c for i, c in enumerate(cmd)))
    with Timed() as timed, open(out, "w") as fo, open(err, "w") as fe:
        code = subprocess.call(cmd, stdout=fo, stderr=fe, env=_subprocess_env())
    if code != 0:
        raise PointFailed(f"point {point.name} failed (exit {code}): {log_tail(err)} (log: {err})")
    return collect(point, out.read_text(errors="replace"), err.read_text(errors="replace"), timed.wall,
                   timed.load_before, timed.load_after)


def _summary_line(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "elapsed_s" in data:
                return data
    raise PointFailed("no JSON summary with elapsed_s in the stage's output")


def _ranks_seen(stderr: str) -> Optional[int]:
    m = re.search(r"\[r0/(\d+)\]", stderr)
    return int(m.group(1)) if m else None


def collect(point: Point, stdout: str, stderr: str, wall: float, load0: float, load1: float) -> dict:
    """The measurements of a finished point (generate: its JSON summary; train-ae: done.json + curve.csv)."""
    seen = _ranks_seen(stderr)
    if seen is not None and seen != point.ranks:
        raise PointFailed(f"point {point.name} ran on {seen} rank(s), expected {point.ranks}")
    result = {"wall_s": wall, "load_before": load0, "load_after": load1}
    if point.stage == "generate":
        try:
            summary = _summary_line(stdout)
        except PointFailed as exc:
            raise PointFailed(f"point {point.name}: {exc}") from None
        frames = int(summary["frames_total"])
        if frames != point.work or not summary.get("complete", False):
            raise PointFailed(f"point {point.name}: store has {frames} frames (complete={summary.get('complete')}), "
                              f"expected {point.work}")
        elapsed = float(summary["elapsed_s"])
        result.update(time_s=elapsed, startup_s=max(wall - elapsed, 0.0), work_done=frames,
                      frames_per_s=frames / elapsed, labels_per_s=frames * point.labels_per_frame / elapsed,
                      summary={k: v for k, v in summary.items() if k not in ("bytes_by_array",)})
        return result
    run = Path(point.spec.run_dir) / "autoencoder"
    try:
        done = json.loads((run / "done.json").read_text())
        with open(run / "curve.csv") as fh:
            curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, ValueError) as exc:
        raise PointFailed(f"point {point.name}: no done.json / curve.csv in {run} ({exc})") from None
    if int(done["workers"]) != point.ranks:
        raise PointFailed(f"point {point.name} trained with {done['workers']} worker(s), expected {point.ranks}")
    cumulative = [row["seconds"] for row in curve]
    durations = [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]
    timed = list(range(1, len(durations))) if len(durations) >= 2 else [0]
    s_epoch = statistics.median(durations[e] for e in timed)
    ae = point.spec.autoencoder
    g0, n_train, _ = training_frames(point.spec)
    from hpcsur import store as zstore

    fps = zstore.open_dataset(point.spec.store.path).schema.frames_per_shard
    steps = measured_steps((g0, g0 + n_train), fps, point.ranks, ae.batch, ae.seed, timed)
    mean_steps = sum(steps) / len(steps)
    samples = mean_steps * ae.batch * point.ranks
    result.update(time_s=s_epoch, startup_s=max(wall - float(done["seconds"]), 0.0), work_done=samples,
                  steps_per_epoch=mean_steps, epochs=len(durations), epochs_timed=len(timed),
                  seconds_total=float(done["seconds"]), backend=done.get("backend", ""),
                  samples_per_s=samples / s_epoch, s_per_epoch=s_epoch)
    return result


# ---------------------------------------------------------------------------- Slurm
def cluster_cpus() -> tuple[int, int]:
    """(total CPUs, most CPUs on one node) of the Slurm cluster, from ``sinfo``."""
    if shutil.which("sinfo") is None:
        raise InputError("--slurm: sinfo not found; run on a Slurm login node (or start the local test cluster: "
                         "slurm/local/start.sh)")
    try:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise InputError("--slurm: sinfo did not answer in 30 s (is slurmctld up?)") from None
    nodes = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            nodes[parts[0]] = int(parts[1])
    if res.returncode != 0 or not nodes:
        raise InputError(f"--slurm: sinfo found no nodes ({' '.join(res.stderr.split()) or 'no output'})")
    return sum(nodes.values()), max(nodes.values())


def check_fits_cluster(points: Sequence[Point], total: int, per_node: int) -> None:
    """Every point's tasks must fit the cluster (else its job would pend forever); one error line."""
    for p in points:
        if p.stage == "generate":
            sl = p.spec.slurm
            if sl.nodes * sl.ntasks_per_node != p.ranks:
                raise InputError(f"--slurm: {p.ranks} ranks do not fill whole nodes of [slurm] ntasks_per_node = "
                                 f"{sl.ntasks_per_node}; choose multiples of {sl.ntasks_per_node}")
            tasks, node_tasks = p.ranks * sl.cpus_per_task, sl.ntasks_per_node * sl.cpus_per_task
        else:
            tasks = node_tasks = p.ranks * p.spec.train.threads
        if tasks > total or node_tasks > per_node:
            raise InputError(f"--slurm: point {p.name} needs {tasks} CPUs ({node_tasks} on one node); the cluster has "
                             f"{total} ({per_node} per node); leave out rank counts above {min(total, per_node)}")


def render_point(point: Point, workdir: str) -> str:
    from hpcsur.ops import slurm

    return slurm.render_script(point.spec, slurm.STAGES[point.stage], template=slurm.load_template(), workdir=workdir,
                               log_dir=point.directory, hpcsur=slurm.default_hpcsur(),
                               mpiexec=slurm.default_mpiexec(point.spec), job_path=point.spec_path)


def point_dependency(points: Sequence[Point], ids: Sequence[str], i: int) -> Optional[str]:
    """``--dependency`` of point ``i`` (``ids`` of the points before it): after the previous point
    (``afterany``, so no two points share the nodes) and, for a training point, ``afterok`` on the
    job that generates its store (a failed store job cancels the training points)."""
    p = points[i]
    parts = [f"afterany:{ids[i - 1]}"] if i else []
    if p.stage == "train-ae":
        store = next((j for j, q in enumerate(points[:i])
                      if q.stage == "generate" and q.spec.store.path == p.spec.store.path), None)
        if store is not None:
            if store == i - 1:
                parts = []
            parts.append(f"afterok:{ids[store]}")
    return ",".join(parts) or None


def slurm_wall(point: Point, job_id: str) -> Optional[float]:
    """Seconds of the point's last run, from the structured record its batch script wrote."""
    from hpcsur.ops import slurm

    records = slurm.stage_records(point.directory, point.stage, job_id)
    return records[-1]["end"] - records[-1]["start"] if records else None


def run_slurm(points: Sequence[Point], workdir: str, poll: float = 2.0) -> dict[str, dict]:
    """Submit one batch job per point (chained), wait for all of them, collect each point's results."""
    from hpcsur.ops import slurm

    ids: list[str] = []
    scripts = []
    for p in points:
        write_point(p)
        script = os.path.join(p.directory, f"{p.stage}.sbatch")
        Path(script).write_text(render_point(p, workdir))
        scripts.append(script)
    try:
        for i, p in enumerate(points):
            dep = point_dependency(points, ids, i)
            ids.append(slurm.sbatch(scripts[i], dep))
            log.info("%s: submitted job %s%s", p.name, ids[-1], f" (after {dep})" if dep else "")
        ended: dict[str, tuple[str, str]] = {}
        load_at = {}  # job id -> load average when first seen running, and when seen ended
        while len(ended) < len(ids):
            states = slurm.job_states([j for j in ids if j not in ended])
            for job_id, recs in states.items():
                state = recs[0].get("JobState", "UNKNOWN")
                if state == "RUNNING":
                    load_at.setdefault(job_id, [load()])
                elif state not in slurm.ACTIVE:
                    ended[job_id] = (state, recs[0].get("ExitCode", ""))
                    load_at.setdefault(job_id, [load()]).append(load())
                    log.info("job %s: %s", job_id, state)
            if len(ended) < len(ids):
                time.sleep(poll)
    except (KeyboardInterrupt, InputError):
        slurm.scancel(ids)
        raise
    results = {}
    for p, job_id in zip(points, ids):
        state, code = ended[job_id]
        load0, load1 = load_at[job_id][0], load_at[job_id][-1]
        out = Path(p.directory) / f"{p.stage}-{job_id}.out"
        err = Path(p.directory) / f"{p.stage}-{job_id}.err"
        if state != "COMPLETED":
            raise PointFailed(f"point {p.name}: Slurm job {job_id} ended {state} (exit {code}): {log_tail(err)} "
                              f"(log: {out})")
        text = out.read_text(errors="replace") if out.exists() else ""
        wall = slurm_wall(p, job_id)
        results[p.name] = collect(p, text, err.read_text(errors="replace") if err.exists() else "",
                                  wall if wall is not None else float("nan"), load0, load1)
        results[p.name]["job_id"] = job_id
    return results


# ============================================================================ the command
def prepare_output(plan: ScalePlan, force: bool) -> None:
    """Refuse to reuse point folders of an earlier study (a store must never serve two points),
    unless ``force``: then they are removed first."""
    existing = [p.directory for p in plan.points if os.path.exists(p.directory)]
    if existing and not force:
        raise InputError(f"{plan.out_dir}: point folder {existing[0]} exists from an earlier run; choose another "
                         "--output, or pass --force to remove the old points")
    for path in existing:
        shutil.rmtree(path)


def dry_run_text(plan: ScalePlan, use_slurm: bool, workdir: str) -> str:
    lines = []
    for i, p in enumerate(plan.points):
        role = "" if p.measured else "  (set-up: the training store, not a point)"
        if use_slurm:
            dep = point_dependency(plan.points, [f"<job {q.name}>" for q in plan.points], i)
            lines.append(f"# ==== {p.directory}/{p.stage}.sbatch{role}"
                         + (f"  (sbatch --dependency={dep})" if dep else ""))
            lines.append(render_point(p, workdir))
        else:
            lines.append(f"{p.name}: {shlex.join(launch_command(p, plan.backend))}{role}")
    return "\n".join(lines)


def run_scale(plan: ScalePlan, use_slurm: bool = False, force: bool = False, workdir: Optional[str] = None) -> dict:
    """Run (or submit) every point, fit the model, extrapolate, write the outputs; returns the report."""
    workdir = workdir or os.getcwd()
    if use_slurm:
        total, per_node = cluster_cpus()
        check_fits_cluster(plan.points, total, per_node)
    prepare_output(plan, force)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    results: dict[str, dict] = {}
    if use_slurm:
        results = run_slurm(plan.points, workdir)
    else:
        cpus = os.cpu_count() or 1
        for p in plan.points:
            if p.ranks > cpus:
                log.warning("%s: %d ranks on %d cores: oversubscribed, the timing measures the host", p.name, p.ranks,
                            cpus)
            results[p.name] = run_local(p, plan.backend)
            r = results[p.name]
            log.info("%s: %.3g s (%s), wall %.3g s, load %.1f -> %.1f", p.name, r["time_s"],
                     "stage" if p.stage == "generate" else "per epoch", r["wall_s"], r["load_before"], r["load_after"])
    measured = plan.measured
    param_bytes = autoencoder_parameter_bytes(plan.spec) if "train-ae" in plan.stages else 0
    counts, fits, refs = {}, {}, {}
    for stage in plan.stages:
        mine = [p for p in measured if p.stage == stage]
        for p in mine:
            steps = results[p.name].get("steps_per_epoch")
            counts[p.name] = point_counts(p, steps=steps, param_bytes=param_bytes)
        terms = generation_terms(plan.spec.kind) if stage == "generate" else TRAINING_TERMS
        fits[stage] = fit_model([counts[p.name] for p in mine], [results[p.name]["time_s"] for p in mine], terms)
        refs[stage] = mine[0]
    rows = build_rows(measured, results, plan.mode, fits, counts)
    extra = [P for P in plan.extrapolate if P > plan.ranks[-1]]
    extrapolation = extrapolate(plan, fits, refs, param_bytes, extra)
    report = {
        "job": plan.spec.name, "source": plan.spec.source, "mode": plan.mode,
        "weak_dim": plan.weak_dim if plan.mode == "weak" else None, "ranks": list(plan.ranks),
        "stages": list(plan.stages), "launcher": "slurm" if use_slurm else "local", "epochs": plan.epochs,
        "host": {"name": socket.gethostname(), "cpus": os.cpu_count(), "load_start": list(load_start),
                 "load_end": list(os.getloadavg())},
        "elapsed_s": time.perf_counter() - t_start, "train_store": plan.train_store,
        "param_bytes": param_bytes or None,
        "points": [{"name": p.name, "stage": p.stage, "ranks": p.ranks, "measured": p.measured,
                    "directory": p.directory, "spec": p.spec_path, "store": p.spec.store.path,
                    "frames": p.work, "grid": list(p.grid), "groups": p.groups,
                    **{k: v for k, v in results.get(p.name, {}).items() if k != "summary"}}
                   for p in plan.points],
        "rows": rows,
        "model": {stage: {**fit.to_dict(), "equation": MODEL_EQUATIONS[stage]} for stage, fit in fits.items()},
        "extrapolation": extrapolation,
    }
    write_outputs(Path(plan.out_dir), report, rows)
    report["table"] = format_table(rows, extrapolation) + "\n\n" + format_model(fits)
    return report


MODEL_EQUATIONS = {
    "generate": "T(P) = c*W + c_h*H + lambda*M + t0; W = ceil(T/G) S a (owned site-steps), "
                "H = halo + gathered values, M = messages (busiest rank)",
    "train-ae": "T_epoch(W) = c_s*(s B + V/(3W)) + alpha*(3 s + 4) ceil(log2 W) + beta*s 2 (W-1)/W n_p + t0, "
                "s = steps per epoch",
}
