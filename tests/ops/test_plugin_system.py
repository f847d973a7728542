"""A system defined in one file outside the package (tests/ops/plugin_system/cooling_ring.py), installed
with pip, registered through the ``hpcsur.systems`` entry-point group, through the whole pipeline."""
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import zarr

HPCSUR = str(Path(sys.executable).parent / "hpcsur")
PLUGIN = Path(__file__).parent / "plugin_system"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The plug-in installed (non-editable) into a folder of its own, put on PYTHONPATH for the CLI."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("plugin") / "src"
    shutil.copytree(PLUGIN, source)   # the build writes next to its sources; keep the checkout clean
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                          timeout=300, cwd=target)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def _spec(tmp_path: Path) -> Path:
    tables = tomllib.loads((PLUGIN / "cooling_ring.toml").read_text())
    tables["store"]["path"] = str(tmp_path / "store")
    tables["output"] = {"dir": str(tmp_path / "run"), "results": str(tmp_path / "results")}
    path = tmp_path / "cooling_ring.toml"
    path.write_text(tomli_w.dumps(tables))
    return path


def _env(site: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_without_the_plugin_the_kind_is_refused_in_one_line(tmp_path):
    done = subprocess.run([HPCSUR, "validate", str(_spec(tmp_path))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'cooling_ring'" in lines[0] and "predator_prey" in lines[0], done.stderr


@pytest.mark.mpi
def test_a_plugin_system_runs_generate_to_evaluate(tmp_path, site):
    spec = _spec(tmp_path)
    done = subprocess.run([HPCSUR, "run", str(spec), "--ranks", "2"], capture_output=True, text=True, timeout=600,
                          env=_env(site), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("generate", "train-ae", "encode", "train-latent", "evaluate"):
        assert f"[run] {stage}: exit 0" in done.stdout

    # the physics is the plug-in's: under explicit Euler the ring term sums to zero, so the mean decays
    # by exactly (1 - g dt) per step; the store's observable must follow it frame by frame
    tables = tomllib.loads(spec.read_text())
    g, dt, every = tables["system"]["g"], tables["simulation"]["dt"], tables["simulation"]["save_every"]
    group = zarr.open_group(str(tmp_path / "store"), mode="r")
    assert group.attrs["system"] == "cooling_ring"
    phi, traj = np.asarray(group["phi"][:]), np.asarray(group["traj"][:])
    first = phi[traj == 0, 0]
    expected = first[0] * (1.0 - g * dt) ** (every * np.arange(first.size))
    np.testing.assert_allclose(first, expected, rtol=1e-12)

    results = json.loads((tmp_path / "results" / "cooling_ring.json").read_text())
    assert results["system"] == "cooling_ring"
    rows = {row["loss"]: row for row in results["rows"]}
    assert set(rows) == {"lz", "lxp"}
    assert all(np.isfinite(row["e_abs"]["mean"]) for row in rows.values())
    assert rows["lxp"]["force_evaluations"]["train"] == rows["lz"]["force_evaluations"]["train"]  # equal cost
