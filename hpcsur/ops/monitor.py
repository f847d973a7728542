"""``hpcsur monitor``: where a campaign stands, read from its stores -- not from dask.

The member list comes from the job spec (the same :func:`~hpcsur.ops.campaign.plan_members` the
driver uses), progress from each member's store (completion records: shards and frames done; bytes
on disk), and the run facts -- dashboard URL, scheduler, driver pid, task states -- from
``<run_dir>/campaign.json``, which the driver writes when its cluster is up and updates as members
finish. Nothing is locked or written, so monitoring never disturbs the campaign, and it works the
same after the driver is gone (a driver that died without recording it shows as interrupted).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from hpcsur.ops.campaign import (MemberProgress, human_bytes, member_progress, plan_members, point_text,
                                 state_path)
from hpcsur.ops.jobspec import JobSpec


def read_state(spec: JobSpec) -> Optional[dict]:
    """The campaign's state file, or None before its first run (a torn read is impossible: it is
    replaced atomically)."""
    try:
        return json.loads(state_path(spec).read_text())
    except FileNotFoundError:
        return None


def driver_alive(state: dict) -> Optional[bool]:
    """Whether the recorded driver process still runs; None when it ran on another host."""
    if state.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Snapshot:
    """One look at a campaign: run facts, per-member store progress, task states."""

    job: str
    state: Optional[dict]
    run_state: str
    members: list[tuple[Any, MemberProgress, str]]  # (Member, its store progress, task status)
    taken_unix: float

    @property
    def frames_done(self) -> int:
        return sum(p.frames_done for _, p, _ in self.members)

    @property
    def frames_total(self) -> int:
        return sum(p.frames_total for _, p, _ in self.members)

    def rate(self) -> Optional[tuple[float, int, float]]:
        """(frames/s, frames, seconds) written by the latest run of the driver, if there was one."""
        if not self.state:
            return None
        start = self.state.get("started_unix", self.taken_unix)
        end = self.taken_unix if self.run_state == "running" else self.state.get("updated_unix", self.taken_unix)
        frames = self.frames_done - int(self.state.get("frames_at_start", 0))
        seconds = max(end - start, 1e-9)
        return frames / seconds, frames, seconds


def take_snapshot(spec: JobSpec, members=None) -> Snapshot:
    """Read the state file and every member's store (with bytes on disk)."""
    members = members if members is not None else plan_members(spec)
    state = read_state(spec)
    recorded = {r["index"]: r for r in (state or {}).get("members", [])}
    run_state = "not started" if state is None else state.get("state", "unknown")
    if run_state == "running" and driver_alive(state) is False:
        run_state = "interrupted (driver gone)"
    rows = []
    for m in members:
        status = recorded.get(m.index, {}).get("status", "-")
        if run_state.startswith("interrupted") and status in ("queued", "running"):
            status = "stopped"
        rows.append((m, member_progress(m, with_bytes=True), status))
    return Snapshot(spec.name, state, run_state, rows, time.time())


def format_snapshot(snap: Snapshot, recent_rate: Optional[float] = None) -> str:
    """The monitor's text: header, dashboard, one row per member, totals, rate (pure)."""
    st = snap.state or {}
    lines = [f"campaign {snap.job}: {snap.run_state}"
             + (f" (driver pid {st.get('pid')} on {st.get('host')}, started {st.get('started')}; "
                f"scheduler {st.get('scheduler')} {st.get('scheduler_address', '')}".rstrip()
                + (f", {st['workers']} worker(s)" if st.get("workers") else "") + ")" if st else "")]
    lines.append(f"dashboard: {st.get('dashboard') or '-'}")
    head = ("member", "point", "task", "store", "shards", "frames", "bytes")
    body = []
    for m, p, status in snap.members:
        body.append((m.name, point_text(m.overrides), status, p.state,
                     f"{p.shards_done}/{'-' if p.shards_total is None else p.shards_total}",
                     f"{p.frames_done}/{p.frames_total}", human_bytes(p.bytes)))
    states = [p.state for _, p, _ in snap.members]
    shards_done = sum(p.shards_done for _, p, _ in snap.members)
    shards_known = all(p.shards_total is not None for _, p, _ in snap.members)
    shards_total = sum(p.shards_total for _, p, _ in snap.members) if shards_known else None
    pct = 100.0 * snap.frames_done / max(snap.frames_total, 1)
    tasks = [status for _, _, status in snap.members]
    task_counts = ", ".join(f"{tasks.count(t)} {t}" for t in dict.fromkeys(tasks) if t != "-") or "-"
    body.append(("total", f"{len(snap.members)} members", task_counts,
                 f"{states.count('complete')} complete",
                 f"{shards_done}/{'-' if shards_total is None else shards_total}",
                 f"{snap.frames_done}/{snap.frames_total} ({pct:.0f}%)",
                 human_bytes(sum(p.bytes or 0 for _, p, _ in snap.members))))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *body)]
    rate = snap.rate()
    if rate is not None and rate[1] == 0 and snap.run_state != "running":
        lines.append("rate: - (the latest run wrote no frames)")
    elif rate is not None:
        text = f"rate: {rate[0]:.1f} frames/s over the latest run ({rate[1]} frames in {rate[2]:.1f} s)"
        if recent_rate is not None:
            text += f", {recent_rate:.1f} frames/s since the last look"
        lines.append(text)
    return "\n".join(lines)


def watch(spec: JobSpec, interval: float = 5.0, once: bool = False, stream=None) -> int:
    """Print a snapshot (``once``) or one every ``interval`` seconds until the campaign is no
    longer running. Returns 0."""
    stream = stream or sys.stdout
    members = plan_members(spec)
    previous: Optional[Snapshot] = None
    while True:
        snap = take_snapshot(spec, members)
        recent = None
        if previous is not None:
            recent = (snap.frames_done - previous.frames_done) / max(snap.taken_unix - previous.taken_unix, 1e-9)
        print(format_snapshot(snap, recent), file=stream, flush=True)
        if once or snap.run_state != "running":
            return 0
        previous = snap
        print("", file=stream, flush=True)
        time.sleep(interval)
