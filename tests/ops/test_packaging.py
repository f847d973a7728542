"""A plain, non-editable ``pip install .`` carries everything the CLI needs (templates as package data)."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_non_editable_install_submits_a_dry_run(tmp_path):
    # a fresh venv; its dependencies come from this venv's site-packages through a path entry (which does
    # not run that folder's .pth files, so this checkout's editable hpcsur is not visible there)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = tmp_path / "src"   # a copy, so the build leaves the checkout untouched
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hpcsur", source / "hpcsur", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(source)

    work = tmp_path / "work"   # neither the checkout nor the source copy is on the path
    work.mkdir()
    shutil.copy(ROOT / "jobs" / "predator_prey.toml", work / "job.toml")
    where = subprocess.run([str(python), "-c", "import hpcsur; print(hpcsur.__file__)"], capture_output=True,
                           text=True, cwd=work, check=True).stdout.strip()
    assert where.startswith(site), where
    done = subprocess.run([str(venv / "bin" / "hpcsur"), "submit", "job.toml", "--dry-run"], capture_output=True,
                          text=True, cwd=work, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --job-name=hpcsur-job-generate" in done.stdout
    assert "(sbatch --dependency=afterok:<generate job id>)" in done.stdout
    assert not (work / "runs").exists()   # a dry run writes nothing
