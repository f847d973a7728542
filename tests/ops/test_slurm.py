"""``hpcsur submit`` / ``hpcsur status`` and the batch scripts they render.

Two kinds of tests:

* rendering, quoting and input checks, which need no cluster (the scripts are parsed with
  ``bash -n`` and, with harmless real commands in place of hpcsur and mpiexec, run by bash);
* ``@pytest.mark.slurm`` tests against the real single-node cluster of ``slurm/local`` (``make
  test`` starts it): a 2-rank generate job and a dependent job in an ``afterok`` chain, an ensemble
  as array jobs, ``scancel`` leaving a resumable store, and requeued jobs (``scontrol requeue`` and
  the time-limit signal) resuming from what is on disk. Every wait is bounded; no timing asserts.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.ops import slurm
from hpcsur.ops.jobspec import load_job, parse_job
from hpcsur.store import completed_shards, info, open_dataset, verify

BIN = Path(sys.executable).parent
HPCSUR = str(BIN / "hpcsur")
MPIEXEC = str(BIN / "mpiexec")
STATE = Path(os.environ.get("HPCSUR_SLURM_STATE", "/run/hpcsur-slurm"))

#: The stage that runs after generate in the chain test: a training job (2 workers in the allocation).
DEPENDENT_STAGE = "train-ae"

# A tiny predator-prey job: 4 trajectories x 15 frames, 12 shards; seconds to generate.
TINY = """
[system]
kind = "predator_prey"
n = 50
[simulation]
trajectories = 4
dt = 0.01
steps = 140
save_every = 10
seed = 3
integrator = "euler"
[labels]
p = 0.2
full = true
[store]
path = {store}
frames_per_shard = 5
[output]
dir = {run_dir}
[split]
validation = 1
test = 1
[autoencoder]
latent_dim = 3
hidden = [8]
epochs = {epochs}
batch = 4
[slurm]
time = "00:10:00"
ntasks_per_node = {ntasks}
setup = {setup}
"""

# A longer one for interrupting: 4 trajectories x 60 frames of 2000 cells, 40 shards (several
# seconds; the tests interrupt it after 3 shards).
LONG = """
[system]
kind = "predator_prey"
n = 2000
[simulation]
trajectories = 4
dt = 0.01
steps = 2950
save_every = 50
seed = 11
integrator = "euler"
[labels]
p = 0.2
full = true
[store]
path = "store/long"
frames_per_shard = 6
[slurm]
time = "00:10:00"
ntasks_per_node = 2
"""


def toml_str(text: str) -> str:
    """A TOML basic string holding ``text`` exactly."""
    return json.dumps(text)


def tiny_job(folder: Path, name: str = "pp", store: str = "store/pp", run_dir: str = "runs/pp",
             ntasks: int = 2, setup: tuple[str, ...] = (), epochs: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(TINY.format(store=toml_str(store), run_dir=toml_str(run_dir), ntasks=ntasks, epochs=epochs,
                                setup="[" + ", ".join(toml_str(s) for s in setup) + "]"))
    return path


def run_cli(cwd: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([HPCSUR, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess, command: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"hpcsur {command}: error: "), lines[0]
    return lines[0]


# ============================================================================ no cluster needed
def test_parse_stages():
    assert slurm.parse_stages("generate,train-ae,encode,train-latent,evaluate") == slurm.PIPELINE
    assert slurm.parse_stages(" generate , verify ") == ("generate", "verify")
    for bad, words in [("generate,trian-ae", "unknown stage 'trian-ae'"), ("", "give a comma-separated list"),
                       ("generate,generate", "twice"), ("train-ae,generate", "out of order")]:
        with pytest.raises(InputError, match=words):
            slurm.parse_stages(bad)


def test_parse_ensemble():
    assert slurm.parse_ensemble(None) is None and slurm.parse_ensemble("3") == 3
    for bad in ("0", "-2", "three", "1.5"):
        with pytest.raises(InputError, match="--ensemble"):
            slurm.parse_ensemble(bad)


@pytest.mark.parametrize("table,words", [
    ('time = "1:2:3:4"', "is not a Slurm time"),
    ('time = "abc"', "is not a Slurm time"),
    ('time = "0"', "at least 1 minute"),
    ('time = "00:00:30"', "at least 1 minute"),
    ('time = "00:01:00"', "signal_seconds = 90 is out of range"),
    ('partition = "debug$(touch /tmp/hpcsur-pwned)"', "is not a Slurm name"),
    ('partition = "debug\\ntouch /tmp/hpcsur-pwned"', "is not a Slurm name"),
    ('account = "a b"', "is not a Slurm name"),
    ('mem = "4 G"', "is not a Slurm memory size"),
    ('options = ["-x; rm -rf /"]', "is not a long sbatch option"),
    ('options = ["--comment=a\\nb"]', "control character"),
    ('mpiexec = "/opt/mpi\\n/bin/mpiexec"', "control character"),
    ('launcher = "ssh"', "is not allowed"),
    ('signal_seconds = 70000', "out of range"),
])
def test_slurm_table_checks(tmp_path, table, words):
    text = TINY.format(store='"s"', run_dir='"r"', ntasks=1, epochs=1, setup="[]").replace('time = "00:10:00"\n', "")
    text += table + "\n"
    with pytest.raises(InputError, match=words) as err:
        parse_job(__import__("tomllib").loads(text), source="job.toml")
    assert "\n" not in str(err.value)


def _plan(spec, stages=("generate", "verify"), ensemble=None, workdir="/work", hpcsur=("/venv/bin/hpcsur",),
          mpiexec="/venv/bin/mpiexec"):
    return slurm.plan_submission(spec, stages, workdir=workdir, template=slurm.load_template(),
                                 hpcsur=list(hpcsur), mpiexec=mpiexec, ensemble=ensemble)


def _directives(script: str) -> list[str]:
    return [ln[len("#SBATCH "):] for ln in script.splitlines() if ln.startswith("#SBATCH ")]


def test_render_resources_and_chain(tmp_path):
    job = tiny_job(tmp_path)
    text = job.read_text().replace("[slurm]\n", '[slurm]\npartition = "short"\naccount = "proj-1"\nmem = "2G"\n'
                                               'options = ["--constraint=cpu fast"]\n')
    job.write_text(text)
    plan = _plan(load_job(job))
    gen, ver = plan.jobs
    d = _directives(gen.script)
    assert d[:5] == ["--job-name=hpcsur-pp-generate", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                     "--time=00:10:00"]
    for line in ('--partition="short"', '--account="proj-1"', '--mem="2G"', "--requeue", "--signal=B:USR1@90",
                 "--open-mode=append", '--output="/work/runs/pp/slurm/generate-%j.out"',
                 '--error="/work/runs/pp/slurm/generate-%j.err"', '--constraint="cpu fast"'):
        assert line in d, (line, d)
    assert "--ntasks=1" in _directives(ver.script) and "--cpus-per-task=2" in _directives(ver.script)
    assert 'launch=(env SLURM_MPI_TYPE=none /venv/bin/mpiexec -n "$SLURM_NTASKS")' in gen.script
    assert "set -- /venv/bin/hpcsur generate /work/runs/pp/slurm/pp.toml --resume" in gen.script
    assert "set -- /venv/bin/hpcsur store verify store/pp\n" in ver.script and "launch=()" in ver.script
    assert plan.dependency("41") == "afterok:41"
    assert plan.spec_path in plan.files and "[slurm]" in plan.files[plan.spec_path]
    # training stages: [train] workers data-parallel ranks of [train] threads each
    ae = _plan(load_job(job), stages=("train-ae", "evaluate")).jobs
    assert _directives(ae[0].script)[1:3] == ["--ntasks=2", "--cpus-per-task=1"]
    assert "set -- /venv/bin/hpcsur train-ae /work/runs/pp/slurm/pp.toml --resume" in ae[0].script
    assert 'launch=(env SLURM_MPI_TYPE=none /venv/bin/mpiexec -n "$SLURM_NTASKS")' in ae[0].script
    assert "set -- /venv/bin/hpcsur evaluate /work/runs/pp/slurm/pp.toml\n" in ae[1].script
    # srun launcher: an explicit PMI plugin, and SIGTERM through scancel (not to srun itself)
    job.write_text(text.replace("[slurm]\n", '[slurm]\nlauncher = "srun"\n'))
    gen = _plan(load_job(job)).jobs[0]
    assert "launch=(srun --mpi=pmi2 --kill-on-bad-exit=1)" in gen.script
    assert 'scancel --signal=TERM "$SLURM_JOB_ID"' in gen.script


def test_render_ensemble_arrays(tmp_path):
    plan = _plan(load_job(tiny_job(tmp_path)), ensemble=3)
    assert plan.dependency("41") == "aftercorr:41"
    assert [m.store_path for m in plan.members] == ["store/pp-0", "store/pp-1", "store/pp-2"]
    assert [m.spec_path for m in plan.members] == [f"/work/runs/pp-{i}/pp-{i}.toml" for i in range(3)]
    for job in plan.jobs:
        d = _directives(job.script)
        assert "--array=0-2" in d and f'--output="/work/runs/pp/slurm/{job.stage}-%A_%a.out"' in d
    assert "  1) set -- /venv/bin/hpcsur generate /work/runs/pp-1/pp-1.toml --resume ;;" in plan.jobs[0].script
    assert "  2) set -- /venv/bin/hpcsur store verify store/pp-2 ;;" in plan.jobs[1].script
    seeds = {load_member_seed(plan.files[m.spec_path]) for m in plan.members}
    assert seeds == {3, 4, 5}


def load_member_seed(text: str) -> int:
    return __import__("tomllib").loads(text)["simulation"]["seed"]


#: Quotes, command substitution, backticks, a command separator and a comment sign; executed, any
#: of them would create the file "pwned" in the working directory.
HOSTILE = "x'y\"z $(touch pwned) `touch pwned`; touch pwned #"


def test_hostile_strings_stay_inert(tmp_path):
    """Quotes, $(...), backticks, ; and # in the job name, run folder, store path and working
    directory: the rendered scripts are valid bash, every value comes back intact, and running
    them (with harmless real commands as hpcsur and mpiexec) executes nothing of it."""
    evil = HOSTILE
    workdir = tmp_path / f"work {evil}"
    setup_mark = tmp_path / "setup-ran"
    job = tiny_job(workdir, name="pp;x$(id)", store=f"store {evil}", run_dir=f"runs {evil}",
                   setup=(f"touch {shlex.quote(str(setup_mark))}",))
    spec = load_job(job)
    for ensemble in (None, 2):
        plan = _plan(spec, ensemble=ensemble, workdir=str(workdir), hpcsur=("echo",), mpiexec=MPIEXEC)
        for sj in plan.jobs:
            script = sj.script
            res = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
            # the #SBATCH block is unbroken: every line up to the first command is a comment
            head = script.split("\nset -eo pipefail\n")[0].splitlines()
            assert all(ln.startswith("#") for ln in head), head
            assert f"--job-name=hpcsur-pp_x__id_-{sj.stage}" in _directives(script)
            # the command line comes back word for word
            argv_lines = [ln.strip() for ln in script.splitlines() if ln.strip().startswith(("set -- ", "0) set -- "))]
            words = shlex.split(argv_lines[0].removeprefix("0) ").removesuffix(";;"))
            target = plan.members[0] if ensemble else None
            expected = (target.spec_path if target else plan.spec_path) if sj.stage == "generate" else \
                (target.store_path if target else f"store {evil}")
            assert expected in words, (expected, words)
            # run it: bash executes every line with the hostile values in place (`echo` as hpcsur,
            # under the real mpiexec for the MPI stage)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
            env.update(SLURM_NTASKS="2", SLURM_ARRAY_TASK_ID="0")
            run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                                 timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
            assert expected in run.stdout  # `echo` printed the argument intact
            assert not list(tmp_path.rglob("pwned")), "a hostile string was executed"
    assert setup_mark.exists()  # the setup lines are shell code and do run


def test_control_characters_in_paths_are_refused(tmp_path):
    job = tiny_job(tmp_path, run_dir="runs/a\nb")
    with pytest.raises(InputError, match="control character"):
        _plan(load_job(job))


def test_submit_bad_input_one_line_nothing_written(tmp_path):
    job = tiny_job(tmp_path)
    for args, words in [(["--stages", "generate,bogus"], "unknown stage 'bogus'"),
                        (["--ensemble", "0"], "--ensemble 0 is out of range"),
                        (["--stages", "verify,generate"], "out of order")]:
        line = one_error_line(run_cli(tmp_path, "submit", job.name, *args), "submit")
        assert words in line, line
    job.write_text(job.read_text().replace('time = "00:10:00"', 'time = "10:99:99:99"'))
    assert "is not a Slurm time" in one_error_line(run_cli(tmp_path, "submit", job.name, "--stages", "generate"),
                                                   "submit")
    job = tiny_job(tmp_path, setup=("if then fi (",))
    line = one_error_line(run_cli(tmp_path, "submit", job.name, "--stages", "generate", "--dry-run"), "submit")
    assert "not valid shell" in line
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_scripts_and_writes_nothing(tmp_path):
    job = tiny_job(tmp_path)
    res = run_cli(tmp_path, "submit", job.name, "--stages", "generate,verify", "--ensemble", "2", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("#!/bin/bash") == 2 and "--dependency=aftercorr:<generate job id>" in res.stdout
    assert "#SBATCH --array=0-1" in res.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


def test_status_without_submission_is_one_line(tmp_path):
    job = tiny_job(tmp_path)
    assert "no submission recorded" in one_error_line(run_cli(tmp_path, "status", job.name), "status")


def test_parse_scontrol_and_jobcomp():
    text = ("JobId=12 ArrayJobId=11 ArrayTaskId=1 JobName=hpcsur-pp-generate UserId=root(0) JobState=COMPLETED "
            "Reason=None Dependency=(null) Requeue=1 Restarts=2 RunTime=00:00:05 ExitCode=0:0 Command=/a b\n")
    (rec,) = slurm.parse_scontrol(text)
    assert rec["JobState"] == "COMPLETED" and rec["ArrayTaskId"] == "1" and rec["Restarts"] == "2"
    log = ("JobId=5 UserId=root(0) Name=x JobState=FAILED Partition=debug ExitCode=1:0\n"
           "JobId=55 UserId=root(0) Name=y JobState=COMPLETED ExitCode=0:0\n")
    assert slurm.parse_jobcomp(log, ["5"]) == {"5": {"JobId": "5", "JobState": "FAILED", "ExitCode": "1:0",
                                                     "JobName": "x"}}


# ============================================================================ the real cluster
def _cluster_reason() -> str | None:
    """None when the local cluster accepts jobs, else why not (for the skip message)."""
    if shutil.which("sbatch") is None:
        why = "sbatch is not installed"
    else:
        try:
            res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
            states = res.stdout.split()
            if res.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
                return None
            why = f"no node accepts jobs (sinfo: {' '.join(states) or res.stderr.strip()})"
        except subprocess.TimeoutExpired:
            why = "sinfo did not answer in 15 s"
    unavailable = STATE / "unavailable"
    if unavailable.exists():
        why += f"; slurm/local/start.sh: {unavailable.read_text().strip()}"
    return f"local Slurm cluster not available ({why}); `make test` starts it with slurm/local/start.sh"


@pytest.fixture
def cluster():
    """The running local cluster; jobs a test leaves behind are cancelled after it."""
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)
    submitted: list[str] = []
    yield submitted
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True, timeout=30)


def submit(cluster: list, cwd: Path, job: Path, *args) -> list[dict]:
    res = run_cli(cwd, "submit", job.name, *args)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = load_job(job)
    state = json.loads((cwd / spec.run_dir / "slurm" / "jobs.json").read_text())
    stages = state["submissions"][-1]["stages"]
    cluster.extend(s["job_id"] for s in stages)
    for s in stages:  # the printed ids are the recorded ones
        assert f"job {s['job_id']}" in res.stdout
    return stages


def records(job_id: str) -> list[dict]:
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    return slurm.parse_scontrol(res.stdout)


def wait_gone(job_id: str, timeout: float = 240) -> list[dict]:
    """Wait until ``job_id`` (all its array tasks, any requeues) has ended; its records.

    From scontrol's states, not from squeue, which can miss a job for a moment while it is requeued.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = records(job_id)
        if recs and not any(r.get("JobState") in slurm.ACTIVE for r in recs):
            return recs
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still queued after {timeout:.0f} s: {records(job_id)}")


def wait_state(job_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.get("JobState") == state for r in records(job_id)):
            return
        time.sleep(0.3)
    pytest.fail(f"job {job_id} never reached {state}: {records(job_id)}")


def wait_shards(store: Path, at_least: int, job_id: str, timeout: float = 180) -> int:
    """Wait until ``store`` has ``at_least`` complete shards (the job must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(completed_shards(store)) if (store / "zarr.json").exists() else 0
        if done >= at_least:
            return done
        states = {r.get("JobState") for r in records(job_id)}
        assert states & {"PENDING", "CONFIGURING", "RUNNING"}, f"job {job_id} ended early: {records(job_id)}"
        time.sleep(0.2)
    pytest.fail(f"{store}: fewer than {at_least} shards after {timeout:.0f} s")


def log_text(run_dir: Path, stage: str, job_id: str, ext: str = "out") -> str:
    return (run_dir / "slurm" / f"{stage}-{job_id}.{ext}").read_text()


def assert_complete(store: Path) -> None:
    summary = info(store)
    assert summary["shards_complete"] == summary["shards_total"] and summary["consolidated"], summary
    report = verify(store)
    assert report.ok, str(report)


def status_json(cwd: Path, job: Path) -> dict:
    res = run_cli(cwd, "status", job.name, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slurm
def test_two_rank_generate_then_dependent_stage(cluster, tmp_path):
    job = tiny_job(tmp_path, setup=("echo setup line ran in job $SLURM_JOB_ID",))
    gen, dep = submit(cluster, tmp_path, job, "--stages", f"generate,{DEPENDENT_STAGE}")
    assert dep["dependency"] == f"afterok:{gen['job_id']}"
    # a second submission over the running one is refused (two generators on one store)
    again = one_error_line(run_cli(tmp_path, "submit", job.name, "--stages", "generate"), "submit")
    assert "still queued or running" in again and gen["job_id"] in again
    # the dependant waits on its dependency (it may already run if generate was very quick)
    (first,) = records(dep["job_id"])
    assert first["JobState"] in ("PENDING", "RUNNING", "COMPLETED"), first
    if first["JobState"] == "PENDING":
        assert first["Dependency"].startswith(f"afterok:{gen['job_id']}"), first
    (g,) = wait_gone(gen["job_id"])
    (d,) = wait_gone(dep["job_id"])
    run_dir = tmp_path / "runs" / "pp"
    assert g["JobState"] == "COMPLETED", (g, log_text(run_dir, "generate", gen["job_id"], "err"))
    assert d["JobState"] == "COMPLETED", (d, log_text(run_dir, DEPENDENT_STAGE, dep["job_id"], "err"))
    out, err = log_text(run_dir, "generate", gen["job_id"]), log_text(run_dir, "generate", gen["job_id"], "err")
    assert f"setup line ran in job {gen['job_id']}" in out
    assert "rank grid 1 x 2 groups" in err  # two MPI ranks inside the allocation
    assert_complete(tmp_path / "store" / "pp")
    dep_out = log_text(run_dir, DEPENDENT_STAGE, dep["job_id"])
    assert f"stage {DEPENDENT_STAGE} exited with status 0" in dep_out
    if DEPENDENT_STAGE == "verify":
        assert "ok: 12 complete shards match their checksums" in dep_out
    else:  # train-ae: a checkpoint in the run folder
        assert list(run_dir.rglob("*.pt")), sorted(run_dir.rglob("*"))
    report = status_json(tmp_path, job)
    assert [(s["stage"], s["tasks"][0]["state"]) for s in report["stages"]] == [
        ("generate", "COMPLETED"), (DEPENDENT_STAGE, "COMPLETED")]
    # each run's structured record (start, end, status) as the batch script wrote it
    assert [[(r["stage"], r["status"]) for r in s["tasks"][0]["runs"]] for s in report["stages"]] == [
        [("generate", 0)], [(DEPENDENT_STAGE, 0)]]
    assert report["stores"][0]["complete"] and report["stores"][0]["shards_complete"] == 12
    table = run_cli(tmp_path, "status", job.name).stdout
    assert "COMPLETED" in table and "12/12" in table


@pytest.mark.slurm
def test_ensemble_array_of_three_members(cluster, tmp_path):
    job = tiny_job(tmp_path, ntasks=1)
    gen, ver = submit(cluster, tmp_path, job, "--stages", "generate,verify", "--ensemble", "3")
    assert gen["array"] == ver["array"] == "0-2" and ver["dependency"] == f"aftercorr:{gen['job_id']}"
    g, v = wait_gone(gen["job_id"]), wait_gone(ver["job_id"])
    assert sorted((r["ArrayTaskId"], r["JobState"]) for r in g) == [(str(i), "COMPLETED") for i in range(3)], g
    assert sorted((r["ArrayTaskId"], r["JobState"]) for r in v) == [(str(i), "COMPLETED") for i in range(3)], v
    xs = []
    for i in range(3):
        member = tmp_path / "runs" / f"pp-{i}" / f"pp-{i}.toml"
        assert load_job(member).simulation.seed == 3 + i  # the resolved member spec the task ran
        store = tmp_path / "store" / f"pp-{i}"
        assert_complete(store)
        assert open_dataset(store).attrs["seed"] == 3 + i
        ds = open_dataset(store)
        xs.append(np.asarray(ds.global_frames(0, ds.n_frames)["x"]))
        assert f"ok: 12 complete shards" in log_text(tmp_path / "runs" / "pp", "verify", f"{ver['job_id']}_{i}")
    assert not np.array_equal(xs[0], xs[1]) and not np.array_equal(xs[1], xs[2])
    report = status_json(tmp_path, job)
    assert [t["state"] for s in report["stages"] for t in s["tasks"]] == ["COMPLETED"] * 6
    assert [s["complete"] for s in report["stores"]] == [True] * 3


def long_job(tmp_path: Path) -> Path:
    job = tmp_path / "long.toml"
    job.write_text(LONG)
    return job


@pytest.mark.slurm
def test_scancel_leaves_a_resumable_store(cluster, tmp_path):
    job = long_job(tmp_path)
    (gen,) = submit(cluster, tmp_path, job, "--stages", "generate")
    store = tmp_path / "store" / "long"
    wait_shards(store, 3, gen["job_id"])
    subprocess.run(["scancel", gen["job_id"]], check=True, timeout=30)
    (rec,) = wait_gone(gen["job_id"])
    assert rec["JobState"] == "CANCELLED", rec
    summary = info(store)
    assert 3 <= summary["shards_complete"] < summary["shards_total"] == 40, summary
    assert verify(store).ok
    assert status_json(tmp_path, job)["stages"][0]["tasks"][0]["state"] == "CANCELLED"
    # the run's own resolved spec, resumed by hand
    snapshot = tmp_path / "runs" / "long" / "slurm" / "long.toml"
    res = subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "generate", str(snapshot), "--resume", "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resuming (" in res.stderr
    assert_complete(store)


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["scontrol-requeue", "time-limit-signal"])
def test_requeued_generate_resumes_and_completes(cluster, tmp_path, how):
    """``scontrol requeue`` (Slurm kills and reruns the script), or the time-limit signal
    (SIGUSR1 to the batch shell: the script stops the stage and requeues itself): either way the
    next run resumes the store from disk and the job ends COMPLETED."""
    job = long_job(tmp_path)
    (gen,) = submit(cluster, tmp_path, job, "--stages", "generate")
    store = tmp_path / "store" / "long"
    done_before = wait_shards(store, 3, gen["job_id"])
    if how == "scontrol-requeue":
        subprocess.run(["scontrol", "requeue", gen["job_id"]], check=True, timeout=30)
    else:  # what --signal=B:USR1@90 does 90 s before the time limit
        subprocess.run(["scancel", "--signal=USR1", "--batch", gen["job_id"]], check=True, timeout=30)
    (rec,) = wait_gone(gen["job_id"], timeout=300)
    run_dir = tmp_path / "runs" / "long"
    out, err = log_text(run_dir, "generate", gen["job_id"]), log_text(run_dir, "generate", gen["job_id"], "err")
    assert rec["JobState"] == "COMPLETED" and int(rec["Restarts"]) >= 1, (rec, out, err)
    assert "stage generate, run 2" in out
    resumed = [ln for ln in err.splitlines() if "resuming (" in ln]
    assert resumed, err
    assert int(resumed[-1].split("resuming (")[1].split()[0]) >= done_before
    if how == "time-limit-signal":
        assert "SIGUSR1 (time limit near)" in err and f"requeueing job {gen['job_id']}" in err
    assert_complete(store)


@pytest.mark.slurm
def test_requeued_training_resumes_from_its_checkpoint(cluster, tmp_path):
    """The time-limit signal reaches a running train-ae job: both workers stop at the next step,
    checkpoint and exit 75; the script requeues the job, which resumes from the checkpoint."""
    job = tiny_job(tmp_path, epochs=400)
    gen = subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "generate", job.name, "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    (train,) = submit(cluster, tmp_path, job, "--stages", "train-ae")
    curve = tmp_path / "runs" / "pp" / "autoencoder" / "curve.csv"    # training has started
    deadline = time.monotonic() + 180
    while not (curve.exists() and len(curve.read_text().splitlines()) > 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert curve.exists(), records(train["job_id"])
    subprocess.run(["scancel", "--signal=USR1", "--batch", train["job_id"]], check=True, timeout=30)
    (rec,) = wait_gone(train["job_id"], timeout=400)
    run_dir = tmp_path / "runs" / "pp"
    out, err = log_text(run_dir, "train-ae", train["job_id"]), log_text(run_dir, "train-ae", train["job_id"], "err")
    assert rec["JobState"] == "COMPLETED" and int(rec["Restarts"]) >= 1, (rec, out, err)
    assert "checkpoint written, resume with --resume" in err
    assert "train-ae: resuming at epoch" in err
    summary = json.loads((run_dir / "autoencoder" / "done.json").read_text())
    assert summary["epochs"] == 400 and summary["workers"] == 2


@pytest.mark.slurm
def test_hostile_paths_through_real_slurm(cluster, tmp_path):
    """The run folder and store path carry quotes, $(...), backticks, ; and #: sbatch reads the
    #SBATCH lines intact (the logs land in that folder), and nothing of them is executed."""
    evil = HOSTILE
    job = tiny_job(tmp_path, name="pp", store=f"store {evil}", run_dir=f"runs {evil}", ntasks=1)
    (gen,) = submit(cluster, tmp_path, job, "--stages", "generate")
    (rec,) = wait_gone(gen["job_id"])
    run_dir = tmp_path / f"runs {evil}"
    assert rec["JobState"] == "COMPLETED", (rec, sorted(p.name for p in tmp_path.iterdir()))
    assert "stage generate exited with status 0" in log_text(run_dir, "generate", gen["job_id"])
    (record,) = slurm.stage_records(str(run_dir / "slurm"), "generate", gen["job_id"])  # structured, one run
    assert (record["job"], record["stage"], record["run"], record["status"]) == (gen["job_id"], "generate", 1, 0)
    assert record["end"] >= record["start"] > 1.7e9
    assert_complete(tmp_path / f"store {evil}")
    assert not list(tmp_path.rglob("pwned")), "a hostile string was executed"


@pytest.mark.slurm
def test_time_limit_refused_by_slurm_submits_nothing(cluster, tmp_path):
    """The local cluster's partition `short` allows 5 minutes (EnforcePartLimits=ALL): sbatch
    refuses 10, and `hpcsur submit` reports it in one line with nothing left queued."""
    job = tiny_job(tmp_path)
    job.write_text(job.read_text().replace("[slurm]\n", '[slurm]\npartition = "short"\n'))
    line = one_error_line(run_cli(tmp_path, "submit", job.name, "--stages", "generate,verify"), "submit")
    assert "sbatch refused the generate stage" in line and "time limit" in line.lower(), line
    queued = subprocess.run(["squeue", "-h", "-n", "hpcsur-pp-generate,hpcsur-pp-verify", "-o", "%i %j %Z"],
                            capture_output=True, text=True, timeout=30).stdout
    assert str(tmp_path) not in queued
    assert not (tmp_path / "runs" / "pp" / "slurm" / "jobs.json").exists()
