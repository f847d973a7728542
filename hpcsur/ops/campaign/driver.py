"""The campaign driver: plan, lock the run folder, hand the members to the cluster, follow them, record
``campaign.json`` and print the summary."""
from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

from hpcsur.errors import InputError
from hpcsur.ops.campaign.clusters import open_client, render_slurm_script
from hpcsur.ops.campaign.members import (Member, MemberProgress, STATE_FILE, Settings, _mpiexec, default_workers,
                                         log, member_command, member_progress, member_task, plan_members, run_member)
from hpcsur.ops.jobspec import JobSpec
from hpcsur.store.lock import acquire_folder_lock, describe_holder
from hpcsur.store.manifest import write_json_atomic


# ----------------------------------------------------------------------------- driver
def progress_line(name: str, members_done: int, members_total: int, frames_done: int, frames_total: int,
                  rate: float, workers: int | None = None) -> str:
    """``campaign NAME: 2/3 members, 480/720 frames (67%), 35.2 frames/s[, 2 workers]`` (pure)."""
    pct = 100.0 * frames_done / max(frames_total, 1)
    return (f"campaign {name}: {members_done}/{members_total} members, {frames_done}/{frames_total} frames "
            f"({pct:.0f}%), {rate:.1f} frames/s"
            + (f", {workers} worker{'' if workers == 1 else 's'}" if workers is not None else ""))


def summary_table(rows: list[dict]) -> str:
    """A fixed-width table of the final member records (pure)."""
    head = ("member", "point", "status", "shards", "frames", "bytes", "time_s", "store")
    body = [(r["name"], point_text(r["overrides"]), r["status"],
             f"{r['shards_done']}/{'-' if r['shards_total'] is None else r['shards_total']}",
             f"{r['frames_done']}/{r['frames_total']}", human_bytes(r.get("bytes")),
             "-" if r.get("elapsed_s") is None else f"{r['elapsed_s']:.1f}", r["store"]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body))


def point_text(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(overrides.items())) or "-"


def human_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def state_path(spec: JobSpec) -> Path:
    return Path(spec.run_dir) / STATE_FILE


def member_record(member: Member, prog: MemberProgress, status: str, result: dict | None = None) -> dict:
    """One member's entry in the state file."""
    rec = {"index": member.index, "name": member.name, "overrides": member.overrides, "store": member.store,
           "run_dir": member.run_dir, "status": status, "frames_total": prog.frames_total,
           "frames_done": prog.frames_done, "shards_done": prog.shards_done, "shards_total": prog.shards_total,
           "bytes": prog.bytes}
    if result:
        rec.update({k: result[k] for k in ("returncode", "elapsed_s", "log", "host", "message") if k in result})
    return rec


class _Driver:
    """The driver's bookkeeping: state file, progress line, member records."""

    def __init__(self, spec: JobSpec, settings: Settings, members: list[Member], stream):
        self.spec, self.settings, self.members, self.stream = spec, settings, members, stream
        self.path = state_path(spec)
        self.started = time.time()
        self.status = {m.index: "pending" if settings.chooses(m.index) else "not chosen" for m in members}
        self.results: dict[int, dict] = {}
        self.state: dict[str, Any] = {}
        self.frames_at_start = 0

    def snapshot(self, with_bytes=False) -> dict[int, MemberProgress]:
        return {m.index: member_progress(m, with_bytes=with_bytes) for m in self.members}

    def chosen(self, progress: dict[int, MemberProgress]) -> list[MemberProgress]:
        """The progress of the members this run is for (all, or those of --members)."""
        return [p for i, p in progress.items() if self.status[i] != "not chosen"]

    def write(self, run_state: str, progress: dict[int, MemberProgress], **extra) -> None:
        chosen = self.chosen(progress)
        frames = sum(p.frames_done for p in chosen)
        self.state.update({
            "job": self.spec.name, "source": self.spec.source, "state": run_state, "stages": self.settings.stages,
            "scheduler": self.settings.scheduler, "ranks_per_member": self.settings.ranks_per_member,
            "pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd(),
            "started": _iso(self.started), "started_unix": self.started, "updated_unix": time.time(),
            "frames_at_start": self.frames_at_start,
            "totals": {"members": len(chosen),
                       "members_done": sum(s in ("ok", "skipped") for s in self.status.values()),
                       "members_failed": sum(s == "failed" for s in self.status.values()),
                       "frames_total": sum(p.frames_total for p in chosen), "frames_done": frames},
            "members": [member_record(m, progress[m.index], self.status[m.index], self.results.get(m.index))
                        for m in self.members], **extra})
        write_json_atomic(self.path, self.state)

    def progress(self, progress: dict[int, MemberProgress], workers: int | None = None) -> str:
        chosen = self.chosen(progress)
        frames = sum(p.frames_done for p in chosen)
        rate = (frames - self.frames_at_start) / max(time.time() - self.started, 1e-9)
        done = sum(s in ("ok", "skipped", "failed") for s in self.status.values())
        return progress_line(self.spec.name, done, len(chosen), frames, sum(p.frames_total for p in chosen), rate,
                             workers)

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def describe_plan(members: list[Member], settings: Settings, todo: set[int]) -> str:
    """The dry-run listing: one line per member with its command (pure)."""
    lines = [f"# {len(members)} members, {len(todo)} to run; scheduler {settings.scheduler}, "
             f"{settings.ranks_per_member} rank(s) per member, stages {settings.stages}"]
    for m in members:
        task = member_task(m, settings, ".")
        cmd = " ".join(member_command(task, "python", "mpiexec"))
        skip = "skip (complete)" if settings.chooses(m.index) else "skip (not chosen)"
        lines.append(f"{m.index:>4} {m.name}  {point_text(m.overrides)}  store {m.store}  "
                     f"{'run: ' + cmd if m.index in todo else skip}")
    return "\n".join(lines)


def prepare(spec: JobSpec, settings: Settings) -> tuple[list[Member], dict[int, MemberProgress], set[int]]:
    """Validate everything and read the stores; writes nothing. Returns the members, their
    progress and the indices still to run."""
    members = plan_members(spec)
    if settings.stages == "all":  # the pipeline's learning stages need these tables
        spec.require("autoencoder", "hpcsur campaign --stages all")
        spec.require("latent", "hpcsur campaign --stages all")
    if settings.ranks_per_member > 1:
        _mpiexec()
    progress = {m.index: member_progress(m, check_hash=True) for m in members}
    todo = {m.index for m in members if (settings.stages == "all" or not progress[m.index].complete)
            and settings.chooses(m.index)}
    return members, progress, todo


def run_campaign(spec: JobSpec, settings: Settings, *, dry_run: bool = False, interval: float = 2.0,
                 stream=None, prepared=None) -> int:
    """Run (or with ``dry_run`` only describe) ``spec``'s campaign. Returns the exit code:
    0 when every member is complete, 1 when a member failed."""
    stream = stream or sys.stderr
    members, progress, todo = prepared or prepare(spec, settings)
    if dry_run:
        print(describe_plan(members, settings, todo))
        if settings.scheduler == "slurm":
            print("# worker job script (SLURMCluster, one per dask worker):")
            print(render_slurm_script(spec, settings))
        return 0
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_folder_lock(spec.run_dir, "run folder", "campaign driver")
    except InputError:
        raise InputError(f"campaign {spec.name}: already running ({describe_holder(spec.run_dir)})") from None
    with lock:
        driver = _Driver(spec, settings, members, stream)
        driver.frames_at_start = sum(p.frames_done for p in driver.chosen(progress))
        for m in members:
            if m.index not in todo and driver.status[m.index] != "not chosen":
                driver.status[m.index] = "skipped"
        if not todo:
            final = driver.snapshot(with_bytes=True)
            driver.write("finished", final, finished=_iso(time.time()), dashboard=None)
            chosen = "all" if settings.members is None else f"the {len(settings.members)} chosen of the"
            driver.say(f"campaign {spec.name}: {chosen} {len(members)} members complete; nothing to do")
            driver.say(summary_table(driver.state["members"]))
            return 0
        n_workers = default_workers(settings, len(todo))
        run_state = "interrupted"
        try:
            with open_client(spec, settings, n_workers) as (client, info):
                driver.write("running", progress, dashboard=info.dashboard, scheduler_address=info.scheduler_address,
                             workers=info.workers)
                log.info("campaign %s: %d of %d members to run on %s (%d worker(s)); dashboard %s",
                         spec.name, len(todo), len(members), info.scheduler_address, info.workers,
                         info.dashboard or "off")
                _run_tasks(client, driver, [m for m in members if m.index in todo], interval)
            run_state = "failed" if any(s == "failed" for s in driver.status.values()) else "finished"
        finally:
            final = driver.snapshot(with_bytes=True)
            driver.write(run_state, final, finished=_iso(time.time()))
    driver.say(driver.progress(final))
    driver.say(summary_table(driver.state["members"]))
    driver.say(f"campaign {spec.name}: {run_state}; state in {driver.path}")
    failed = [r for r in driver.state["members"] if r["status"] == "failed"]
    for r in failed:
        log.error("member %s failed (exit %s): %s; log %s", r["name"], r.get("returncode"), r.get("message", ""),
                  r.get("log"))
    return 1 if failed else 0


def check_result(member: Member, result: dict, stages: str) -> dict:
    """A generate stage that exited 0 must have left a complete store; anything else is a failure."""
    if result["status"] != "ok" or stages != "generate":
        return result
    prog = member_progress(member)
    if prog.complete:
        return result
    return {**result, "status": "failed", "message": f"the stage exited 0 but store {member.store} is incomplete "
                                                    f"({prog.shards_done}/{prog.shards_total or '-'} shards)"}


def _run_tasks(client, driver: _Driver, todo: list[Member], interval: float) -> None:
    """Submit members as worker threads free up, record results, redraw the progress line.

    At most as many members are in flight as the workers have threads: members run for minutes
    to hours, and one handed to a busy worker would wait there while another worker idles (dask
    does not queue a handful of tasks on the scheduler). So "running" in the state file means
    running on a worker, and "queued" means not handed out yet.
    """
    cwd = os.getcwd()
    token = uuid.uuid4().hex[:6]
    waiting = list(todo)
    for m in todo:
        driver.status[m.index] = "queued"
    in_flight: dict = {}
    last = -float("inf")
    while waiting or in_flight:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
        while waiting and len(in_flight) < max(threads, 1):
            m = waiting.pop(0)
            future = client.submit(run_member, member_task(m, driver.settings, cwd), key=f"{m.name}-{token}",
                                   pure=False, retries=0)
            in_flight[future] = m
            driver.status[m.index] = "running"
        finished = [f for f in in_flight if f.done()]
        for f in finished:
            m = in_flight.pop(f)
            try:
                result = f.result()
            except Exception as err:  # the task itself broke (its worker was lost too often, ...)
                result = {"status": "failed", "returncode": None, "message": f"{type(err).__name__}: {err}"}
            result = check_result(m, result, driver.settings.stages)
            driver.results[m.index] = result
            driver.status[m.index] = result["status"]
        now = time.monotonic()
        if finished or now - last >= interval:
            snap = driver.snapshot()
            driver.write("running", snap)
            if now - last >= interval:  # the worker count shows a Slurm campaign still waiting in the queue
                driver.say(driver.progress(snap, threads))
                last = now
        if finished:
            continue  # hand out the next members at once
        time.sleep(min(0.25, interval))


