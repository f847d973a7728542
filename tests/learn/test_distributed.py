"""Data-parallel backends: launcher detection (pure), backend choice and errors, and real 2-rank
launches — ``mpiexec -n 2`` with ddp and with Horovod, ``torchrun --nproc-per-node 2`` with ddp,
and ``srun -n 2`` on the local Slurm cluster with ddp (skipped when the cluster is down).

Each launch runs this file as a worker script (``python test_distributed.py worker BACKEND OUT``):
one launch checks allreduce sum/mean, object and state broadcast from a non-zero root, and that
2 workers x batch B reach the same parameters as 1 worker x batch 2B after 20 Adam steps, on a model
whose forward takes ``autograd.grad(V.sum(), z, create_graph=True)`` and calls it twice per step.
The workers write what they saw to ``OUT/rank<r>.pt``; this process compares the ranks with each
other and with a single-process reference it computes itself.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcsur.errors import InputError
from hpcsur.learn.distributed import BACKENDS, choose_backend, init_backend, scaled_lr
from hpcsur.learn.distributed.torch_dist import DERIVED_PORTS, derived_port
from hpcsur.log import Launch, Progress, detect_launch, env_rank, env_size, first_host

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")
TORCHRUN = str(BIN / "torchrun")
THIS = Path(__file__).resolve()
LAUNCH_TIMEOUT = 240
B = 5          # frames per worker
STEPS = 20     # Adam steps; the last half clip the averaged gradient
SEED = 100     # rank r builds its model with SEED + r; prepare() must broadcast rank 0's


# ----------------------------------------------------------------------------- the training problem

class PotentialModel(torch.nn.Module):
    """dz/dt = -grad V(z) + A z with V an MLP: forward differentiates V w.r.t. its input, keeping
    the graph (as OnsagerNet and GFINNs do). V's output bias never gets a gradient."""

    def __init__(self, dim: int = 3, hidden: int = 12):
        super().__init__()
        self.V = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(),
                                     torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.A = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z if z.requires_grad else z.detach().requires_grad_(True)
        (grad_v,) = torch.autograd.grad(self.V(z).sum(), z, create_graph=True)
        return -grad_v + self.A(z)


def problem(workers: int):
    """Inputs and targets for ``workers * B`` frames (float64, fixed seed)."""
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(workers * B, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(z) - 0.3 * z.roll(1, dims=1)
    return z, y


def train(backend, model, z, y):
    """20 steps of the same recipe the trainer uses: AdamW, a scheduler made before prepare()."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=1e-2, amsgrad=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    model, optimizer = backend.prepare(model, optimizer)
    mse = torch.nn.functional.mse_loss
    for step in range(STEPS):
        loss = mse(model(z), y) + 0.5 * mse(model(0.5 * z), 0.5 * y)   # two forward calls, like lz + lxp
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step >= STEPS // 2:
            backend.sync_gradients(optimizer)   # clip the *averaged* gradient
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        optimizer.step()
        scheduler.step()
    return model, optimizer


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------- worker (a launched rank)

def worker(backend_name: str, out: Path) -> None:
    backend = init_backend(backend_name, timeout_s=120)
    rank, size = backend.rank, backend.size
    res = {"name": backend.name, "rank": rank, "size": size, "local_rank": backend.local_rank,
           "launcher": backend.launch.launcher, "describe": backend.describe()}

    x = torch.tensor([rank + 1.0, 10.0 * (rank + 1)], dtype=torch.float64)
    res["sum"], res["mean"] = backend.allreduce(x, op="sum"), backend.allreduce(x, op="mean")
    res["x_after"] = x
    res["int_sum"] = backend.allreduce(torch.tensor([rank + 1, 7]), op="sum")
    res["object"] = backend.broadcast_object({"from": rank, "payload": [rank] * 3}, root=size - 1)

    # broadcast_state from the last rank: it alone has Adam state and a different lr.
    torch.manual_seed(SEED + rank)
    model = PotentialModel().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 * (rank + 1))
    if rank == size - 1:
        model(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
        optimizer.step()
    backend.broadcast_state(model, optimizer, root=size - 1)
    res["bcast_params"] = params_of(model)
    res["bcast_opt"] = optimizer.state_dict()

    torch.manual_seed(SEED + rank)
    model = PotentialModel().double()
    z, y = problem(size)
    mine = slice(rank * B, (rank + 1) * B)
    model, optimizer = train(backend, model, z[mine], y[mine])
    res["final"] = params_of(model)
    res["final_lr"] = optimizer.param_groups[0]["lr"]
    try:
        optimizer.step(lambda: 0.0)
    except InputError as err:
        res["closure_error"] = str(err)
    backend.barrier()
    torch.save(res, out / f"rank{rank}.pt")
    backend.shutdown()


# ----------------------------------------------------------------------------- launching

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_PREFIXES = ("PMI_", "OMPI_", "PMIX_", "SLURM_", "HOROVOD_", "MPI_LOCAL", "TORCHELASTIC_")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (the tests may run inside a job)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(LAUNCH_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def run_launch(cmd: list[str], out: Path) -> list[dict]:
    """Run a launcher (mpiexec, torchrun, srun) in its own session; on a hang kill the whole session
    (launcher and ranks). Returns what ranks 0 and 1 wrote."""
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=LAUNCH_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
        pytest.fail(f"{cmd[0]} ... hung for {LAUNCH_TIMEOUT}s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"{cmd[0]} ... exit {proc.returncode}:\n{output[-4000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def worker_cmd(backend: str, out: Path) -> list[str]:
    return [sys.executable, str(THIS), "worker", backend, str(out)]


@pytest.fixture(scope="module")
def reference():
    """1 worker x batch 2B, in this process, from rank 0's initial parameters."""
    backend = init_backend("none", launch=Launch())
    torch.manual_seed(SEED)
    model = PotentialModel().double()
    initial = params_of(model)
    model, optimizer = train(backend, model, *problem(2))
    return {"initial": initial, "final": params_of(model), "lr": optimizer.param_groups[0]["lr"]}


def check_ranks(results: list[dict], backend: str, launcher: str, reference: dict) -> None:
    r0, r1 = results
    assert [r["rank"] for r in results] == [0, 1] and {r["size"] for r in results} == {2}
    assert {r["name"] for r in results} == {backend} and {r["launcher"] for r in results} == {launcher}
    for r in results:
        assert torch.equal(r["sum"], torch.tensor([3.0, 30.0], dtype=torch.float64))
        assert torch.equal(r["mean"], torch.tensor([1.5, 15.0], dtype=torch.float64))
        assert torch.equal(r["x_after"], torch.tensor([r["rank"] + 1.0, 10.0 * (r["rank"] + 1)], dtype=torch.float64))
        assert r["int_sum"].tolist() == [3, 14]
        assert r["object"] == {"from": 1, "payload": [1, 1, 1]}
        assert "not supported" in r["closure_error"] and "\n" not in r["closure_error"]
    # state broadcast from rank 1: rank 0 now holds rank 1's parameters, Adam state and lr
    assert all(torch.equal(a, b) for a, b in zip(r0["bcast_params"], r1["bcast_params"]))
    o0, o1 = r0["bcast_opt"], r1["bcast_opt"]
    assert o0["param_groups"] == o1["param_groups"] and o0["param_groups"][0]["lr"] == 2e-3
    assert sorted(o0["state"]) == sorted(o1["state"]) and len(o1["state"]) > 0
    for key in o1["state"]:
        for name, value in o1["state"][key].items():
            assert torch.equal(o0["state"][key][name], value), (key, name)
    # 2 x B == 1 x 2B, on both ranks
    for r in results:
        worst = max(float((a - b).abs().max()) for a, b in zip(r["final"], reference["final"]))
        assert worst <= 1e-6, f"rank {r['rank']}: max |2xB - 1x2B| = {worst:.2e}"
        assert r["final_lr"] == reference["lr"]
    # V's output bias never had a gradient: AdamW (decay included) left it alone everywhere
    assert torch.equal(reference["final"][5], reference["initial"][5])
    assert torch.equal(r0["final"][5], reference["initial"][5])


def horovod_installed() -> bool:
    """Installed at all: a broken install must fail the test, not skip it (make test builds it)."""
    import importlib.util
    return importlib.util.find_spec("horovod") is not None


@pytest.mark.mpi
def test_mpiexec_ddp(tmp_path, reference):
    results = run_launch([MPIEXEC, "-n", "2", *worker_cmd("ddp", tmp_path)], tmp_path)
    check_ranks(results, "ddp", "mpich", reference)
    assert "process group gloo" in results[0]["describe"]


@pytest.mark.mpi
def test_mpiexec_horovod(tmp_path, reference):
    if not horovod_installed():
        pytest.skip("horovod is not installed in this venv (`make horovod` builds it)")
    results = run_launch([MPIEXEC, "-n", "2", *worker_cmd("auto", tmp_path)], tmp_path)
    check_ranks(results, "horovod", "mpich", reference)
    assert "controller MPI" in results[0]["describe"]


@pytest.mark.mpi
def test_torchrun_ddp(tmp_path, reference):
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", *worker_cmd("auto", tmp_path)[1:]]
    check_ranks(run_launch(cmd, tmp_path), "ddp", "torchrun", reference)


def slurm_unavailable() -> str | None:
    """Why the local Slurm cluster cannot run a step now, or None (``make test`` starts it)."""
    if shutil.which("srun") is None:
        return "srun is not installed"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    if res.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in res.stdout.split()):
        return f"no node accepts jobs (sinfo: {res.stdout.strip() or res.stderr.strip()})"
    return None


@pytest.mark.slurm
def test_srun_ddp(tmp_path, reference):
    """A real ``srun -n 2`` step on the local cluster: ddp meets on the port derived from the job."""
    why = slurm_unavailable()
    if why:
        pytest.skip(f"local Slurm cluster not available ({why}); slurm/local/start.sh starts it")
    cmd = ["srun", "-n", "2", "--mpi=none", "--time=5", "--job-name=hpcsur-test-ddp", *worker_cmd("auto", tmp_path)]
    check_ranks(run_launch(cmd, tmp_path), "ddp", "slurm", reference)


# ----------------------------------------------------------------------------- launcher detection (pure)

def test_detect_mpiexec_hydra():
    env = {"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "PMI_FD": "9"}
    assert detect_launch(env) == Launch("mpich", 1, 4, 1, 2)


def test_detect_open_mpi():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert detect_launch(env) == Launch("openmpi", 3, 4, 1, 2)


def test_detect_srun():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_STEP_NUM_TASKS": "6", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1", "SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "3",
           "SLURM_STEP_NODELIST": "cn[007-009]", "SLURM_NODELIST": "cn[001-009]"}
    assert detect_launch(env) == Launch("slurm", 5, 6, 1, 1, "cn007", None, "4711.3")
    # what an sbatch --ntasks=2 shell sees (checked on the local cluster): not a parallel launch
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                   "SLURM_NODELIST": "vm", "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_ID": "17"}
    assert detect_launch(batch_shell) == Launch()


def test_detect_torchrun():
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "abc"}
    assert detect_launch(env) == Launch("torchrun", 2, 4, 0, 2, "n1", 29400, "abc")


def test_detect_horovodrun():
    env = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_LOCAL_SIZE": "2",
           "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1"}
    assert detect_launch(env) == Launch("horovodrun", 1, 2, 1, 2, "10.0.0.1")


def test_detect_nothing_and_innermost_launcher_wins():
    assert detect_launch({}) == Launch() and not Launch().parallel
    in_allocation = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "PMI_RANK": "3", "PMI_SIZE": "4"}
    assert detect_launch(in_allocation).launcher == "mpich" and detect_launch(in_allocation).rank == 3
    torchrun_in_srun = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "RANK": "1", "WORLD_SIZE": "2",
                        "LOCAL_RANK": "1"}
    assert detect_launch(torchrun_in_srun).launcher == "torchrun"
    assert detect_launch({"RANK": "3"}) == Launch()   # a stray RANK alone is not torchrun


def test_log_rank_and_size_follow_the_launcher(monkeypatch):
    for key in list(os.environ):
        if key in LAUNCH_VARS or key.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(key)
    assert (env_rank(), env_size()) == (0, 1)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert (env_rank(), env_size()) == (2, 3)


def test_progress_after_a_resume_rates_only_this_process_work():
    """A resumed run shows the earlier process's steps in done/total but not in its rate or eta."""
    import io
    import time

    progress = Progress(100_000, unit="steps", enabled=True, stream=io.StringIO())
    progress.resumed(90_000)
    assert progress.line().startswith("90000/100000 steps (90%) 0.0 steps/s") and "eta" not in progress.line()
    time.sleep(0.05)
    progress.update(10)
    line = progress.line()
    rate = float(line.split()[3])
    assert 0 < rate <= 10 / 0.05                  # 10 steps in >= 0.05 s (counting the 90,000: >= 1.8e6 steps/s)
    eta = float(line.split("eta ")[1].rstrip("s"))
    assert abs(eta - 9_990 / rate) <= 1         # >= 50 s (counting the 90,000: 0 s)


@pytest.mark.parametrize("nodelist, host", [("vm", "vm"), ("node[07-09,12],gpu1", "node07"), ("a1,b[2-3]", "a1"),
                                             ("rack[1-2]-n[001-004]", "rack1-n001"), ("", None)])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_derived_port():
    a, b = derived_port("4711.0"), derived_port("4711.1")
    assert a == derived_port("4711.0") and a != b
    assert all(DERIVED_PORTS[0] <= p < DERIVED_PORTS[1] for p in (a, b))
    assert derived_port(None) is None


# ----------------------------------------------------------------------------- choice and errors

MPICH2 = Launch("mpich", 0, 2, 0, 2)


@pytest.mark.parametrize("requested, launch, problem, expected", [
    ("auto", Launch(), None, "none"),
    ("auto", MPICH2, None, "horovod"),
    ("auto", Launch("horovodrun", 0, 2), None, "horovod"),
    ("auto", MPICH2, "horovod is not installed", "ddp"),
    ("auto", Launch("torchrun", 0, 2), None, "ddp"),
    ("auto", Launch("slurm", 0, 2), None, "ddp"),
    ("ddp", Launch(), None, "ddp"),
    ("none", MPICH2, None, "none"),
    ("horovod", MPICH2, None, "horovod"),
])
def test_choose_backend(requested, launch, problem, expected):
    assert choose_backend(requested, launch, problem) == expected


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text and text
    return text


def test_unknown_backend_lists_allowed_values():
    text = one_line_error(init_backend, "mpi", launch=MPICH2)
    assert "'mpi'" in text and "auto, horovod, ddp, none" in text


def test_horovod_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod", None)   # what an absent package looks like to imports
    text = one_line_error(init_backend, "horovod", launch=MPICH2)
    assert text == 'backend horovod: horovod is not installed; run `make horovod` or use backend = "ddp"'


def test_horovod_under_torchrun_is_refused():
    text = one_line_error(choose_backend, "horovod", Launch("torchrun", 0, 2), None)
    assert "torchrun" in text and 'backend = "ddp"' in text


def test_backend_names_match_the_job_spec():
    from hpcsur.learn.config import BACKENDS as SPEC_BACKENDS
    assert tuple(SPEC_BACKENDS) == BACKENDS


def test_scaled_lr():
    assert scaled_lr(1e-3, 4, "none") == 1e-3
    assert scaled_lr(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert "none, linear, sqrt" in one_line_error(scaled_lr, 1e-3, 4, "cubic")


def test_none_backend_is_the_identity():
    backend = init_backend("none", launch=Launch())
    assert (backend.name, backend.rank, backend.size, backend.local_rank, backend.is_root) == ("none", 0, 1, 0, True)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(backend.allreduce(x, "sum"), x) and torch.equal(backend.allreduce(x, "mean"), x)
    assert backend.broadcast_object({"a": 1}) == {"a": 1}
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert backend.prepare(model, optimizer) == (model, optimizer)
    assert "allowed: mean, sum" in one_line_error(backend.allreduce, x, op="max")
    backend.barrier()
    backend.shutdown()


def test_ddp_alone_is_a_group_of_one():
    import torch.distributed as dist
    with init_backend("ddp", launch=Launch(), timeout_s=30) as backend:
        assert (backend.name, backend.rank, backend.size) == ("ddp", 0, 1) and dist.is_initialized()
        assert torch.equal(backend.allreduce(torch.tensor([2.0, 4.0]), "mean"), torch.tensor([2.0, 4.0]))
        assert backend.broadcast_object([1, "a"]) == [1, "a"]
        backend.barrier()
    assert not dist.is_initialized()


# ----------------------------------------------------------------------------- make horovod (no build here)

def _build_horovod():
    """tools/build_horovod.py (build tooling, outside the runtime package)."""
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "tools" / "build_horovod.py"
    spec = importlib.util.spec_from_file_location("build_horovod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_horovod_patch_changes_both_cmakelists_and_fails_loudly(tmp_path):
    bh = _build_horovod()
    for rel in bh.PATCHED_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("project(x)\nset(CMAKE_CXX_STANDARD 14)\n")
    bh.patch_cxx_standard(tmp_path)
    assert all("set(CMAKE_CXX_STANDARD 17)" in (tmp_path / rel).read_text() for rel in bh.PATCHED_FILES)
    with pytest.raises(bh.BuildError, match="patch target .* not found in CMakeLists.txt"):
        bh.patch_cxx_standard(tmp_path)   # already patched: the 14 is gone


def test_horovod_cache_key_follows_what_the_libraries_depend_on():
    bh = _build_horovod()
    facts = bh.key_facts()
    assert facts["venv"] == str(Path(sys.prefix).resolve()) and facts["torch"] == torch.__version__
    assert facts["mpi"].startswith("mpich-")
    base = bh.key_name(facts)
    assert base == bh.key_name(dict(facts)) and "/" not in base and "+" not in base
    for field, other in (("venv", "/elsewhere/.venv"), ("torch", "2.14.0"), ("mpi", "openmpi-5.0.11"),
                         ("python", "cp312")):
        assert bh.key_name({**facts, field: other}) != base, field


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    worker(sys.argv[2], Path(sys.argv[3]))
