"""Shared fixtures of the learning tests: a small Predator-Prey job and its generated store."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
HPCSUR, MPIEXEC = str(BIN / "hpcsur"), str(BIN / "mpiexec")

PP_JOB = """
[system]
kind = "predator_prey"
n = 20
[simulation]
trajectories = 12
dt = 0.01
steps = 590
save_every = 10
seed = 3
[labels]
p = 0.25
full = true
draws = 2
[store]
path = "{store}"
[output]
dir = "{run}"
[split]
validation = 1
test = 2
[autoencoder]
latent_dim = 4
hidden = [16]
lambda_cond = 1e-6
epochs = 6
batch = 8
[latent]
hidden = [{hidden}]
equivalent_data = 60
seeds = [1]
epochs = 2
batch = 16
[train]
workers = 2
"""


def write_job(folder: Path, name: str, store: Path, run: Path, hidden: int = 8) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(PP_JOB.format(store=store, run=run, hidden=hidden))
    return path


@pytest.fixture(scope="session")
def pp_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    store = folder / "store"
    job = write_job(folder, "gen", store, folder / "gen-run")
    subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "generate", str(job), "--no-progress"], check=True,
                   capture_output=True, timeout=180)
    return folder, store
