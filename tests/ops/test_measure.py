"""The shared measuring harness of benchmarks/ and `hpcsur scale` (hpcsur/measure.py)."""
import json
import time

import pytest

from hpcsur import measure


def test_time_runs_counts_and_orders():
    calls = []
    runs = measure.time_runs(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(runs.wall) == len(runs.cpu) == 5
    assert runs.best <= runs.median <= max(runs.wall) and runs.spread >= 0
    with pytest.raises(ValueError):
        measure.time_runs(lambda: None, 0)


def test_interleave_alternates_the_order():
    order = []
    runs = measure.interleave({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert set(runs) == {"a", "b"} and all(len(r.wall) == 4 for r in runs.values())


def test_timed_block_and_emitted_line(capsys):
    with measure.Timed() as t:
        time.sleep(0.02)
    assert t.wall >= 0.02 and t.cpu >= 0 and t.load_before >= 0 and t.load_after >= 0
    out = measure.emit({"benchmark": "x", "value": 1})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == out and out["machine"]["cpus"] >= 1 and "host" in out["machine"]
