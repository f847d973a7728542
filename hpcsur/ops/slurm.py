"""Slurm batch jobs for the pipeline: render one sbatch script per stage, submit them as a dependency
chain, record the job ids, and report their state (``hpcsur submit`` / ``hpcsur status``).

Stages and their command lines::

    generate      <launcher> hpcsur generate JOB --resume       R ranks   ([slurm] nodes x ntasks_per_node)
    verify        hpcsur store verify STORE                     1 task    (optional, not in the default chain)
    train-ae      <launcher> hpcsur train-ae JOB --resume       W workers ([train] workers, data-parallel)
    encode        <launcher> hpcsur encode JOB --resume         R ranks
    train-latent  <launcher> hpcsur train-latent JOB --resume   W workers
    evaluate      hpcsur evaluate JOB                           1 task

``<launcher>`` is the MPI's own ``mpiexec -n $SLURM_NTASKS`` inside the allocation, or ``srun
--mpi=<plugin>`` (``[slurm] launcher``); one worker runs without it. These are the command lines of
``hpcsur run`` (:mod:`hpcsur.ops.pipeline`), inside batch jobs.

Each stage is one batch job; stage k+1 depends on stage k with ``afterok``. With ``--ensemble N``
every stage is an array of N tasks, task i running ensemble member i
(:func:`hpcsur.ops.ensemble.member_spec`), and stage k+1's task i depends on stage k's task i
(``aftercorr``). The resolved spec that a job runs is written beside its outputs first (the
submitted file may be edited afterwards without changing what runs).

Quoting. Values from a job spec reach the script in two places. In the ``#SBATCH`` lines (job
name, output files, partition, ...) they are double-quoted the way sbatch reads those lines
(backslash escapes), and any control character is refused: a newline would end the comment line
and make the rest shell code. In the script body every word is :func:`shlex.quote`-d. The
``[slurm] setup`` lines are the exception by design: they are the user's shell code (module load,
source ...) and are run as written; the whole script is checked with ``bash -n`` before anything
is submitted.

Stopping and requeueing: ``--signal=B:USR1@<signal_seconds>`` signals the batch shell, which
sends SIGTERM to the stage's processes (through mpiexec, or ``scancel --signal=TERM`` for srun
steps), waits for the stage and, when it stopped early (non-zero exit; the trainers exit 75 after
a checkpoint), requeues the job (``--requeue``); the next run resumes from what is on disk.
See ``slurm/stage.sbatch`` and ``slurm/README.md``.

Rendering is pure (:func:`plan_submission`, :func:`render_script`); files, ``sbatch``,
``scontrol`` and ``squeue`` are touched only by :func:`write_plan`, :func:`submit_plan`,
:func:`job_states` and :func:`status`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from hpcsur.errors import InputError
from hpcsur.ops.ensemble import member_spec
from hpcsur.ops import stage_table
from hpcsur.ops.jobspec import JobSpec, dump_job
from hpcsur.ops.stage_table import ORDER, PIPELINE, STAGES, Stage  # noqa: F401  (PIPELINE: for hpcsur submit)

#: Where the templates live: package data (hpcsur/ops/templates/, linked from the repository's slurm/),
#: so a plain ``pip install`` can submit; HPCSUR_SLURM_TEMPLATES names another folder.
TEMPLATE_DIR = Path(os.environ.get("HPCSUR_SLURM_TEMPLATES", Path(__file__).resolve().parent / "templates"))
TEMPLATE = "stage.sbatch"
JOBS_FILE = "jobs.json"


def launched(spec: JobSpec, stage: Stage) -> bool:
    """Whether ``stage`` runs through the MPI launcher (several ranks or workers), else as one process."""
    return stage.tasks == "ranks" or (stage.tasks == "workers" and spec.train.workers > 1)
def parse_stages(text: str) -> tuple[str, ...]:
    """``--stages`` of ``hpcsur submit``: the one grammar over every stage (``verify`` included)."""
    return stage_table.parse_stages(text, ORDER)


def parse_ensemble(text: str | None) -> int | None:
    """``--ensemble N``: None (no ensemble) or an integer N >= 1."""
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"--ensemble {text!r} is not an integer; allowed: N >= 1") from None
    if n < 1:
        raise InputError(f"--ensemble {n} is out of range; allowed: N >= 1 (members 0 .. N-1)")
    return n


def check_available(stages: Iterable[str], commands: Iterable[str]) -> None:
    """Each stage's hpcsur subcommand must exist in this installation (before anything is submitted)."""
    commands = set(commands)
    for name in stages:
        if STAGES[name].command[0] not in commands:
            raise InputError(f"stage {name}: this hpcsur has no `hpcsur {STAGES[name].command[0]}` command yet; "
                             "leave the stage out (--stages)")


# ----------------------------------------------------------------------------- rendering (pure)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sbatch_quote(value: str, what: str = "value") -> str:
    """``value`` as one word of an ``#SBATCH`` line.

    sbatch reads those lines itself (no shell): it splits on blanks, honours single and double
    quotes and backslash escapes, and stops at an unquoted ``#``. A double-quoted word with ``\\``
    and ``"`` escaped survives that intact. A control character (newline!) cannot be carried: the
    rest of the line would become shell code, so it is refused.
    """
    if _CONTROL.search(value):
        raise InputError(f"{what} {value!r} contains a control character (newline, tab, ...); an #SBATCH "
                         "line cannot carry it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def slurm_filename(path: str) -> str:
    """A literal path for --output/--error: ``%`` doubled (Slurm expands %j, %A, ... there)."""
    return path.replace("%", "%%")


def job_name(spec_name: str, stage: str) -> str:
    """``hpcsur-<spec>-<stage>`` with anything but letters, digits and ``_ . + -`` turned into ``_``."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"hpcsur-{spec_name}-{stage}")[:200]


def directives(spec: JobSpec, stage: Stage, log_dir: str, array: Optional[str] = None) -> list[str]:
    """The ``#SBATCH`` lines of ``stage`` (resources from ``[slurm]``)."""
    sl = spec.slurm
    pattern = "%A_%a" if array else "%j"
    lines = [f"--job-name={job_name(spec.name, stage.name)}"]
    if stage.tasks == "ranks":
        lines += [f"--nodes={sl.nodes}", f"--ntasks-per-node={sl.ntasks_per_node}",
                  f"--cpus-per-task={sl.cpus_per_task}"]
    elif stage.tasks == "workers":  # data-parallel training: one task per worker, its torch threads
        lines += [f"--ntasks={spec.train.workers}", f"--cpus-per-task={spec.train.threads}"]
    else:  # one process with the cores one node's MPI tasks would have
        lines += ["--nodes=1", "--ntasks=1", f"--cpus-per-task={sl.ntasks_per_node * sl.cpus_per_task}"]
    lines.append(f"--time={sl.time}")
    for name in ("partition", "account", "qos", "mem"):
        value = getattr(sl, name)
        if value is not None:
            lines.append(f"--{name}={sbatch_quote(value, f'[slurm] {name}')}")
    lines += ["--requeue" if sl.requeue else "--no-requeue", f"--signal=B:USR1@{sl.signal_seconds}",
              "--open-mode=append"]
    for ext, opt in (("out", "output"), ("err", "error")):
        path = os.path.join(slurm_filename(log_dir), f"{stage.name}-{pattern}.{ext}")
        lines.append(f"--{opt}={sbatch_quote(path, 'run folder')}")
    if array:
        lines.append(f"--array={array}")
    for option in sl.options:
        name, eq, value = option.partition("=")
        lines.append(name + (eq + sbatch_quote(value, "[slurm] options") if eq else ""))
    return ["#SBATCH " + line for line in lines]


def stage_argv(stage: Stage, hpcsur: Sequence[str], job_path: str, store_path: str) -> list[str]:
    """The stage's command line (without the MPI launcher)."""
    return stage.argv(hpcsur, job_path, store_path)


def launch_words(spec: JobSpec, stage: Stage, mpiexec: str) -> str:
    """``launch=(...)``: the bash array put before the stage's command line."""
    sl = spec.slurm
    if not launched(spec, stage):
        words = []
    elif sl.launcher == "srun":
        # --mpi explicitly: srun without a PMI plugin the MPI knows starts N singletons (size 1 each)
        words = ["srun", f"--mpi={sl.mpi}", "--kill-on-bad-exit=1"]
    else:
        # The MPI's own mpiexec (Hydra for MPICH) starts its proxies with srun and gives the ranks
        # its own PMI; SLURM_MPI_TYPE=none keeps a site's MpiDefault=pmix out of them (MPICH aborts
        # on finding both PMI_* and PMIX_* variables).
        return ("launch=(env SLURM_MPI_TYPE=none " + shlex.quote(mpiexec) + ' -n "$SLURM_NTASKS")')
    return "launch=(" + " ".join(shlex.quote(w) for w in words) + ")"


def stop_command(spec: JobSpec, stage: Stage) -> str:
    """The body of ``stop_stage``: how the batch shell delivers SIGTERM to the stage's processes."""
    if launched(spec, stage) and spec.slurm.launcher == "srun":
        # SIGTERM to srun itself cancels the step (SIGKILL after KillWait); scancel --signal only
        # signals the job's steps (not this batch shell), and their tasks can exit cleanly.
        return '  scancel --signal=TERM "$SLURM_JOB_ID"'
    # a single process, or an mpiexec (Hydra, Open MPI's mpirun), which passes SIGTERM to every rank
    return '  kill -TERM "$stage_pid" 2>/dev/null'


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders; an unknown or unused name is an error (a template bug)."""
    names = set(re.findall(r"\{\{(\w+)\}\}", template))
    if names != set(values):
        raise ValueError(f"template placeholders {sorted(names)} != values {sorted(values)}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class Member:
    """What one array task runs: member ``index``'s resolved spec file and store."""

    index: int
    spec_path: str
    store_path: str


def render_script(spec: JobSpec, stage: Stage, *, template: str, workdir: str, log_dir: str,
                  hpcsur: Sequence[str], mpiexec: str, job_path: str = "",
                  members: Sequence[Member] = ()) -> str:
    """The sbatch script of one stage (an array over ``members`` when given)."""
    array = f"0-{len(members) - 1}" if members else None
    if members:
        cases = "\n".join(f"  {m.index}) set -- {shlex.join(stage_argv(stage, hpcsur, m.spec_path, m.store_path))} ;;"
                          for m in members)
        argv = ('case "${SLURM_ARRAY_TASK_ID:?not an array task}" in\n' + cases +
                '\n  *) echo "hpcsur: no ensemble member $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;\nesac')
        note = " (this array task's ensemble member)"
    else:
        argv = "set -- " + shlex.join(stage_argv(stage, hpcsur, job_path, spec.store.path))
        note = ""
    setup = "\n".join(spec.slurm.setup) if spec.slurm.setup else "# (none)"
    return render_template(template, {
        "directives": "\n".join(directives(spec, stage, log_dir, array)),
        "stage": stage.name, "job": _comment(spec.name), "workdir": shlex.quote(workdir),
        "setup": setup, "argv_note": note, "argv": argv, "launch": launch_words(spec, stage, mpiexec),
        "requeue": "1" if spec.slurm.requeue else "0", "stop": stop_command(spec, stage),
        "timing": shlex.quote(os.path.join(log_dir, stage.name)),
    })


def _comment(text: str) -> str:
    """``text`` made safe inside a comment line (no line breaks)."""
    return _CONTROL.sub("?", text)


# ----------------------------------------------------------------------------- the plan (pure)
@dataclass(frozen=True)
class StageJob:
    """One batch job to submit: its stage, script and where the script is written."""

    stage: str
    script_path: str
    script: str
    array: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    """Everything ``hpcsur submit`` writes and submits, computed before anything happens."""

    spec: JobSpec
    workdir: str                     # the jobs' working directory (relative spec paths start here)
    run_dir: str                     # absolute
    slurm_dir: str                   # absolute: scripts, logs, jobs.json
    spec_path: str                   # the resolved spec the (non-array) jobs run
    files: dict[str, str]            # path -> text, written before submission
    jobs: tuple[StageJob, ...]
    members: tuple[Member, ...] = ()
    ensemble: Optional[int] = None

    def dependency(self, previous_id: str) -> str:
        """``--dependency`` of a stage on the one before it."""
        return f"{'aftercorr' if self.ensemble else 'afterok'}:{previous_id}"


def default_hpcsur() -> list[str]:
    """The hpcsur command of this installation (the script next to this Python, else ``python -m``)."""
    return stage_table.hpcsur_command()


def default_mpiexec(spec: JobSpec) -> str:
    """``[slurm] mpiexec``, else the venv's (or PATH's) mpiexec, else the bare name: the batch script may run
    on nodes whose PATH has one even where this login node has none."""
    return spec.slurm.mpiexec or stage_table.venv_program("mpiexec") or "mpiexec"


def plan_submission(spec: JobSpec, stages: Sequence[str], *, workdir: str, template: str,
                    hpcsur: Sequence[str], mpiexec: str, ensemble: Optional[int] = None) -> Plan:
    """The scripts and files of a submission (pure: nothing is written or run)."""
    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(workdir, path))

    run_dir = absolute(spec.run_dir)
    slurm_dir = os.path.join(run_dir, "slurm")
    spec_path = os.path.join(slurm_dir, f"{spec.name}.toml")
    files = {spec_path: dump_job(spec)}
    members: list[Member] = []
    for i in range(ensemble or 0):
        m = member_spec(spec, i)
        path = os.path.join(absolute(m.run_dir), f"{m.name}.toml")  # beside the member's outputs
        files[path] = dump_job(m)
        members.append(Member(i, path, m.store.path))
    jobs = []
    for name in stages:
        script = render_script(spec, STAGES[name], template=template, workdir=workdir, log_dir=slurm_dir,
                               hpcsur=hpcsur, mpiexec=mpiexec, job_path=spec_path, members=members)
        jobs.append(StageJob(name, os.path.join(slurm_dir, f"{name}.sbatch"), script,
                             f"0-{ensemble - 1}" if ensemble else None))
    return Plan(spec, workdir, run_dir, slurm_dir, spec_path, files, tuple(jobs), tuple(members), ensemble)


def load_template(directory: Path = TEMPLATE_DIR) -> str:
    path = Path(directory) / TEMPLATE
    try:
        return path.read_text()
    except OSError:
        raise InputError(f"{path}: batch-script template not found (set HPCSUR_SLURM_TEMPLATES to the "
                         "folder holding stage.sbatch)") from None


# ----------------------------------------------------------------------------- side effects
def check_syntax(plan: Plan) -> None:
    """``bash -n`` on every script: a broken ``[slurm] setup`` line is one error line, before submission."""
    for job in plan.jobs:
        res = subprocess.run(["bash", "-n"], input=job.script, capture_output=True, text=True)
        if res.returncode != 0:
            first = (res.stderr.strip().splitlines() or ["?"])[0]
            raise InputError(f"{plan.spec.source}: [slurm] the rendered {job.stage} script is not valid shell "
                             f"(check the setup lines): {first}")


def write_plan(plan: Plan) -> None:
    """Write the resolved specs and the scripts."""
    for path, text in {**plan.files, **{j.script_path: j.script for j in plan.jobs}}.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _run(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise InputError(f"`{cmd[0]}` not found: run on a Slurm login node (or start the local test "
                         "cluster: slurm/local/start.sh)") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"`{shlex.join(cmd)}` did not answer in {timeout:.0f} s (is slurmctld up?)") from None


class SbatchRefused(InputError):
    """sbatch did not take a script; the message is sbatch's own, on one line."""


def sbatch(script: str, dependency: Optional[str] = None) -> str:
    """The one Slurm submission client: ``sbatch --parsable [--dependency=D] SCRIPT`` -> the job id."""
    if shutil.which("sbatch") is None:
        raise InputError("sbatch not found: run on a Slurm login node (or start the local test cluster: "
                         "slurm/local/start.sh)")
    res = _run(["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else []), script])
    job_id = res.stdout.strip().split(";")[0]
    if res.returncode != 0 or not job_id.isdigit():
        raise SbatchRefused(" ".join(res.stderr.split()) or f"exit status {res.returncode}")
    return job_id


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel ``job_ids`` (best effort: a job that has already ended is no error)."""
    if job_ids:
        _run(["scancel", *job_ids])


def stage_records(log_dir: str, stage: str, job_id: str) -> list[dict]:
    """The structured records the batch script of ``stage`` wrote for job ``job_id``, one per run (a
    requeued job runs again): ``job``, ``stage``, ``run``, ``host``, ``start``/``end`` (seconds since the
    epoch) and ``status``. Empty when the job never started."""
    path = Path(log_dir) / f"{stage}-{job_id}.timing.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:   # a run killed while writing its record
            continue
    return records


def submit_plan(plan: Plan) -> list[dict]:
    """``sbatch --parsable`` each stage, chained by dependencies. Returns one record per stage.

    If a submission fails, the stages already submitted are cancelled (nothing is left half
    submitted) and sbatch's message becomes one error line.
    """
    records: list[dict] = []
    for job in plan.jobs:
        dependency = plan.dependency(records[-1]["job_id"]) if records else None
        try:
            job_id = sbatch(job.script_path, dependency)
        except SbatchRefused as err:
            scancel([r["job_id"] for r in records])
            raise InputError(f"sbatch refused the {job.stage} stage: {err}"
                             + (f" (cancelled the stages already submitted: "
                                f"{', '.join(r['job_id'] for r in records)})" if records else "")) from None
        records.append({"stage": job.stage, "job_id": job_id, "array": job.array, "dependency": dependency,
                        "script": job.script_path})
    return records


ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT")


def check_not_active(plan: Plan) -> None:
    """Refuse to submit over a previous submission of the same run folder that is still queued or
    running (two generators on one store: the second would fail on the store lock)."""
    try:
        last = json.loads((Path(plan.slurm_dir) / JOBS_FILE).read_text())["submissions"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        return
    ids = [s["job_id"] for s in last.get("stages", [])]
    active = sorted({job_id for job_id, recs in job_states(ids).items()
                     if any(r.get("JobState") in ACTIVE for r in recs)}, key=int)
    if active:
        raise InputError(f"{plan.slurm_dir}: jobs of an earlier submission are still queued or running "
                         f"({', '.join(active)}); wait for them or scancel them first")


def record_submission(plan: Plan, records: list[dict], source: str) -> str:
    """Append this submission to ``<run_dir>/slurm/jobs.json`` (the latest is last). Returns its path."""
    path = Path(plan.slurm_dir) / JOBS_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {"job": plan.spec.name, "submissions": []}
    state["submissions"].append({
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": source, "workdir": plan.workdir,
        "spec": plan.spec_path,
        "ensemble": plan.ensemble, "stages": records,
        "members": [{"index": m.index, "spec": m.spec_path, "store": m.store_path} for m in plan.members],
    })
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)
    return str(path)


# ----------------------------------------------------------------------------- state
#: scontrol fields kept for each job (or array task)
FIELDS = ("JobId", "ArrayJobId", "ArrayTaskId", "JobName", "JobState", "Reason", "RunTime", "ExitCode",
          "Restarts", "Dependency")


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Records of ``scontrol show job -o`` (one line per job or array task), the :data:`FIELDS` only."""
    out = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        rec = {}
        for key, value in re.findall(r"(?:^|\s)(\w+)=(\S*)", line):
            if key in FIELDS and key not in rec:
                rec[key] = value
        out.append(rec)
    return out


def parse_jobcomp(text: str, job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The last ``jobcomp/filetxt`` record of each of ``job_ids`` (finished jobs slurmctld forgot)."""
    wanted = set(job_ids)
    out = {}
    for line in text.splitlines():
        m = re.match(r"JobId=(\d+)\s", line)
        if m and m.group(1) in wanted:
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            out[m.group(1)] = {"JobId": m.group(1), "JobState": fields.get("JobState", "?"),
                               "ExitCode": fields.get("ExitCode", ""), "JobName": fields.get("Name", "")}
    return out


def _jobcomp_file() -> Optional[str]:
    res = _run(["scontrol", "show", "config"], timeout=30)
    conf = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", res.stdout, re.M))
    if conf.get("JobCompType") == "jobcomp/filetxt" and conf.get("JobCompLoc"):
        return conf["JobCompLoc"]
    return None


def job_states(job_ids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """job id -> its records (one per array task), from scontrol, else the job completion log.

    A job neither knows is reported with state ``UNKNOWN`` (slurmctld forgets finished jobs after
    MinJobAge; without slurmdbd there is no sacct).
    """
    out: dict[str, list[dict[str, str]]] = {}
    missing = []
    for job_id in job_ids:
        res = _run(["scontrol", "show", "job", "-o", job_id], timeout=30)
        records = parse_scontrol(res.stdout) if res.returncode == 0 else []
        if records:
            out[job_id] = sorted(records, key=lambda r: (int(r.get("ArrayTaskId", "0") or 0)
                                                         if r.get("ArrayTaskId", "").isdigit() else -1))
        else:
            missing.append(job_id)
    if missing:
        loc = _jobcomp_file()
        found = {}
        if loc:
            try:
                found = parse_jobcomp(Path(loc).read_text(errors="replace"), missing)
            except OSError:
                pass
        for job_id in missing:
            out[job_id] = [found.get(job_id, {"JobId": job_id, "JobState": "UNKNOWN",
                                              "Reason": "not in slurmctld any more, no completion record"})]
    return out


def store_progress(path: str) -> dict:
    """Shards and frames complete of the store at ``path`` (``exists: False`` before it is created)."""
    from hpcsur import store as zstore

    done = zstore.progress(path)
    if not done.exists:
        return {"path": path, "exists": False}
    return {"path": path, "exists": True, "shards_complete": done.shards_done, "shards_total": done.shards_total,
            "frames_complete": done.frames_done, "frames_total": done.frames_total, "complete": done.complete}


def load_submissions(spec: JobSpec, workdir: str) -> tuple[str, dict]:
    """The jobs.json of ``spec``'s run folder and its latest submission."""
    path = Path(workdir) / spec.run_dir / "slurm" / JOBS_FILE
    try:
        state = json.loads(path.read_text())
        return str(path), state["submissions"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        raise InputError(f"{path}: no submission recorded for job {spec.name} (submit it with `hpcsur submit "
                         f"{spec.source}`)") from None


def status(spec: JobSpec, workdir: str) -> dict:
    """Slurm state of each submitted stage (per array task) and the progress of the store(s)."""
    path, sub = load_submissions(spec, workdir)
    workdir = sub.get("workdir", workdir)
    states = job_states([s["job_id"] for s in sub["stages"]])
    stages = []
    for s in sub["stages"]:
        tasks = [{"job_id": r.get("JobId", s["job_id"]), "array_task": r.get("ArrayTaskId"),
                  "state": r.get("JobState", "UNKNOWN"), "reason": r.get("Reason", ""),
                  "run_time": r.get("RunTime", ""), "exit_code": r.get("ExitCode", ""),
                  "restarts": r.get("Restarts", ""),
                  "runs": stage_records(str(Path(path).parent), s["stage"], r.get("JobId", s["job_id"]))}
                 for r in states[s["job_id"]]]
        stages.append({"stage": s["stage"], "job_id": s["job_id"], "array": s.get("array"),
                       "dependency": s.get("dependency"), "tasks": tasks})
    if sub.get("members"):
        stores = [{"member": m["index"], **store_progress(os.path.join(workdir, m["store"]))} for m in sub["members"]]
    else:
        stores = [{"member": None, **store_progress(os.path.join(workdir, spec.store.path))}]
    return {"job": spec.name, "jobs_file": path, "submitted": sub["submitted"], "ensemble": sub.get("ensemble"),
            "stages": stages, "stores": stores, "provenance": stage_provenance(spec)}


def stage_provenance(spec: JobSpec) -> dict[str, str]:
    """Per pipeline stage: "current", "stale: <changed fields>" or "no outputs" (the spec's own run)."""
    from hpcsur.ops import provenance

    out = {}
    for stage in provenance.STAGES:
        if stage in ("train-latent", "evaluate") and spec.latent is None or stage in ("train-ae", "encode") \
                and spec.autoencoder is None:
            continue
        fields = provenance.stale(spec, stage)
        exists = any(p.exists() for p in provenance.stage_outputs(spec, stage))
        out[stage] = (f"stale: {provenance.short(fields)}" if fields else "no outputs" if not exists
                      else "unknown (no provenance record)" if provenance.unrecorded(spec, stage) else "current")
    return out


def format_status(report: dict) -> str:
    """The status report as a readable table."""
    head = f"job {report['job']}: submitted {report['submitted']}"
    if report.get("ensemble"):
        head += f", ensemble of {report['ensemble']}"
    rows = [("stage", "job id", "state", "reason", "run time", "restarts", "exit")]
    for s in report["stages"]:
        for t in s["tasks"]:
            jid = t["job_id"] if t["array_task"] in (None, "") else f"{s['job_id']}_{t['array_task']}"
            reason = "" if t["reason"] in ("None", None) else t["reason"]
            rows.append((s["stage"], jid, t["state"], reason or "-", t["run_time"] or "-",
                         t["restarts"] or "-", t["exit_code"] or "-"))
    lines = [head, *_table(rows), "", *_table([("store", "shards", "frames", "complete")] + [
        (s["path"] + (f"  (member {s['member']})" if s["member"] is not None else ""),
         f"{s['shards_complete']}/{s['shards_total']}" if s["exists"] else "-",
         f"{s['frames_complete']}/{s['frames_total']}" if s["exists"] else "-",
         ("yes" if s["complete"] else "no") if s["exists"] else "not created yet")
        for s in report["stores"]])]
    if report.get("provenance"):
        lines += ["", *_table([("stage", "outputs vs. the spec")] + list(report["provenance"].items()))]
    return "\n".join(lines)


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
