"""One writer per folder: an advisory ``fcntl.flock`` on ``<folder>/.lock`` -- one generator per store
(:func:`acquire_lock`), one campaign driver per run folder (:func:`acquire_folder_lock`).

Why flock rather than an O_EXCL lock file: the kernel drops a flock when its holder's file
descriptor closes, and that includes the process dying from SIGKILL or a node-local OOM kill.
So a crashed generator never leaves a stale lock to clean up by hand, and there is no
"is that pid still alive" guesswork. The file's *content* (host, pid, start time) is only there
to name the holder in the error a second generator gets.

Only rank 0 of a generator takes the lock: the other ranks write their own shards under rank 0's
protection, and rank 0 outlives them (an MPI job dies as a whole).
Caveat: flock is per host on most network file systems' default mounts; two generators on two
different nodes are kept apart only where the file system supports flock across clients (Lustre
with ``-o flock``, GPFS, NFSv4). The holder's host in the file still lets an operator see it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hpcsur.errors import InputError

LOCK_NAME = ".lock"


def lock_path(path: str | os.PathLike) -> Path:
    return Path(path) / LOCK_NAME


@dataclass
class StoreLock:
    """A held lock on one store; release it with :meth:`release` or by leaving a ``with`` block."""

    path: Path
    fd: int | None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            # Closing the descriptor drops the flock; the file itself stays (removing it would let
            # a waiter lock an unlinked inode while a third process creates a fresh one).
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:  # an unreferenced lock must not keep the store locked
        self.release()

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_info() -> dict:
    """What this process writes into the lock file to identify itself."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe_holder(path: str | os.PathLike) -> str:
    """``host=... pid=... since ...`` for the current holder, or 'unknown' if unreadable."""
    try:
        info = json.loads(lock_path(path).read_text() or "{}")
        return f"host={info['host']} pid={info['pid']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown holder (lock file being written)"


def acquire_lock(path: str | os.PathLike) -> StoreLock:
    """Take the store's exclusive lock without waiting; create the store folder if needed.

    Raises :class:`InputError` naming the holder when another process holds it. Keep the returned
    object alive for as long as the store is being written: the lock lasts until it is released,
    garbage-collected or the process ends.
    """
    return acquire_folder_lock(path, "store", "generator")


def acquire_folder_lock(path: str | os.PathLike, what: str = "folder", holder: str = "process") -> StoreLock:
    """The exclusive lock of any folder (e.g. a campaign's run folder), as :func:`acquire_lock`; the error
    reads ``<what> <path>: locked by another <holder> (host=... pid=... since ...)``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    lp = lock_path(root)
    fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"{what} {root}: locked by another {holder} ({describe_holder(root)})") from None
    # Holder info is advisory; write it in place (readers tolerate a half-written file).
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_info()).encode(), 0)
    return StoreLock(lp, fd)
