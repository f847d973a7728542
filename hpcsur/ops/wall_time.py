"""The wall-time ledger of a run: ``<run_dir>/stage_times.jsonl``, one line per stage attempt of ``hpcsur run``.

A stage that is stopped and resumed (a session ends, a job is requeued) runs as several attempts; its wall time
is their sum. Each line also holds the CPU seconds the attempt's processes used (every rank, from the
kernel's accounting of waited-for descendants): on a shared or oversubscribed machine the wall time says how
long the user waited, the CPU time what the stage cost. Lines are appended whole (one ``write``), so a crash
leaves at most a torn last line, which is skipped. A stage whose outputs are removed to be redone (its inputs
changed) starts its ledger over (:func:`forget_stage`); train-latent redoing only its stale runs keeps it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

LEDGER = "stage_times.jsonl"


def record_attempt(run_dir: str | Path, stage: str, seconds: float, cpu_seconds: float, exit_code: int,
                   processes: int) -> None:
    """Append one attempt of ``stage`` to the run's ledger."""
    from hpcsur.provenance import stamp

    path = Path(run_dir) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    code = stamp()
    line = json.dumps({"stage": stage, "seconds": round(float(seconds), 3), "cpu_seconds": round(float(cpu_seconds), 3),
                       "exit": int(exit_code), "processes": int(processes), "ended": code["written"],
                       "commit": code["commit"]})
    with open(path, "a") as fh:
        fh.write(line + "\n")


def forget_stage(run_dir: str | Path, stage: str) -> None:
    """Drop ``stage``'s attempts from the ledger (its outputs were removed to be redone); written to a temporary
    file and renamed, so the ledger is never half-written."""
    path = Path(run_dir) / LEDGER
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if not _is_stage(line, stage)]
    tmp = path.with_name(f".{LEDGER}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _is_stage(line: str, stage: str) -> bool:
    try:
        return json.loads(line)["stage"] == stage
    except (json.JSONDecodeError, KeyError, TypeError):
        return True                                       # a torn line goes too


def stage_wall_times(run_dir: str | Path) -> dict:
    """Per stage, in the order first seen: the summed wall and CPU seconds of its attempts, how many there
    were, and whether the last one finished (exit 0). Empty when the run has no ledger."""
    path = Path(run_dir) / LEDGER
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            a = json.loads(line)
        except json.JSONDecodeError:
            continue                                      # a torn last line
        s = out.setdefault(a["stage"], {"seconds": 0.0, "cpu_seconds": 0.0, "attempts": 0, "finished": False})
        s["seconds"] = round(s["seconds"] + a["seconds"], 3)
        s["cpu_seconds"] = round(s["cpu_seconds"] + a["cpu_seconds"], 3)
        s["attempts"] += 1
        s["finished"] = a["exit"] == 0
    return out
