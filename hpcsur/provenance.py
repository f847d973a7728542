"""Where a result came from: the code's version and commit, recorded next to every claim."""
from __future__ import annotations

import functools
import socket
import subprocess
import time
from pathlib import Path

from hpcsur import __version__

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """hpcsur's version, and the git commit of its source tree with whether tracked files differ
    from it (``dirty``); commit None when the package is not a git checkout."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    return {"version": __version__, "commit": commit, "dirty": dirty}


def stamp() -> dict:
    """code_version() plus the host and the UTC time of writing."""
    return {**code_version(), "host": socket.gethostname(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
