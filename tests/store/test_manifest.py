"""Completion records, consolidate, verify (truncation, flipped byte, deletion) and the store lock."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsur.errors import InputError
from hpcsur.store import (DatasetSchema, ShardWriter, acquire_lock, completed_shards, consolidate,
                          create_dataset, info, read_manifest, shard_file, synthetic_shard, verify)

ATTRS = dict(system="allen_cahn", params={"eps": 0.01}, layout={"m": 1, "n": 16, "fields": ["u"]},
             p=0.25, seed=3, dt=0.01, save_every=1, steps=8)
SCHEMA = DatasetSchema(n_traj=2, frames_per_traj=8, n_state=16, k=4, m=1, n_obs=2,
                       full_labels=False, frames_per_shard=4, chunk_frames=2)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "ds"
    create_dataset(path, SCHEMA, ATTRS)
    w = ShardWriter(path)
    for s in range(SCHEMA.n_shards):
        w.write(s, synthetic_shard(SCHEMA, s))
    return path


def test_records_and_consolidated_manifest(store):
    assert completed_shards(store) == {0, 1, 2, 3}
    rec = json.loads((store / "progress" / "shard-000002.json").read_text())
    assert (rec["frame_start"], rec["frame_stop"]) == (8, 12)
    assert rec["files"]["x"]["path"] == "x/c/2/0" and rec["files"]["t"]["path"] == "t/c/2"
    assert rec["files"]["f_partial"]["path"] == "f_partial/c/2/0/0/0"   # frame, draw, block, coordinate
    for f in rec["files"].values():
        assert (store / f["path"]).stat().st_size == f["bytes"]
    summary = consolidate(store)
    m = read_manifest(store)
    assert summary["path"] == str(store / "manifest.json") and summary["n_complete"] == 4
    assert m["complete"] and m["n_complete"] == 4 and "shards" not in summary
    assert sorted(m["shards"]) == ["0", "1", "2", "3"]
    assert m["bytes_total"] == sum(m["bytes_by_array"].values()) > 0
    assert not list((store / "progress").glob(".*tmp"))  # no temp files left behind


def test_verify_passes_on_good_store(store):
    consolidate(store)
    rep = verify(store)
    assert rep.ok and rep.n_checked == 4 and rep.first_bad is None


def test_verify_detects_truncation(store):
    f = store / shard_file(SCHEMA, "phi", 2)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    rep = verify(store)
    assert not rep.ok
    bad = rep.first_bad
    assert (bad.array, bad.shard, bad.reason, bad.file) == ("phi", 2, "truncated", "phi/c/2/0")
    assert str(len(data)) in bad.expected and str(len(data) // 2) in bad.actual


def test_verify_detects_flipped_byte_and_reports_first(store):
    for s, name in ((3, "x"), (1, "idx")):
        f = store / shard_file(SCHEMA, name, s)
        data = bytearray(f.read_bytes())
        data[len(data) // 3] ^= 0x01
        f.write_bytes(bytes(data))
    rep = verify(store)
    assert len(rep.problems) == 2
    assert (rep.first_bad.shard, rep.first_bad.array, rep.first_bad.reason) == (1, "idx", "altered")
    assert "shard 1 array 'idx'" in str(rep)


def test_verify_detects_deleted_file_and_record(store):
    consolidate(store)
    (store / shard_file(SCHEMA, "step", 0)).unlink()
    rep = verify(store)
    assert (rep.first_bad.shard, rep.first_bad.array, rep.first_bad.reason) == (0, "step", "missing")
    # a record deleted after consolidation is caught against manifest.json
    (store / shard_file(SCHEMA, "step", 0)).parent.mkdir(exist_ok=True)
    os.unlink(store / "progress" / "shard-000003.json")
    reasons = {(p.shard, p.reason) for p in verify(store).problems}
    assert (3, "record mismatch") in reasons
    assert info(store)["shards_complete"] == 3


def test_resume_after_partial_write_rewrites_only_missing(store):
    # Simulate kill -9 mid-shard: shard 2's record is gone and its x file holds garbage.
    os.unlink(store / "progress" / "shard-000002.json")
    (store / shard_file(SCHEMA, "x", 2)).write_bytes(b"half-written")
    (store / "x" / "c" / "2" / "0.deadbeef.partial").write_bytes(b"zarr temp file")
    assert verify(store).ok  # incomplete shards carry no promise
    w = ShardWriter(store)
    assert w.todo() == [2]
    w.write(2, synthetic_shard(SCHEMA, 2))
    assert verify(store).ok and completed_shards(store) == {0, 1, 2, 3}
    assert not list((store / "x" / "c" / "2").glob("*.partial"))


HOLDER = """
import sys, time
from hpcsur.store import acquire_lock
lock = acquire_lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""
TRY = """
import sys
from hpcsur.errors import InputError
from hpcsur.store import acquire_lock
try:
    acquire_lock(sys.argv[1])
except InputError as e:
    print("REFUSED", e); sys.exit(3)
print("ACQUIRED")
"""


def test_lock_refuses_second_generator_until_holder_killed(tmp_path):
    path = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-c", TRY, str(path)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 3, second.stderr
        line = second.stdout.strip()
        assert "\n" not in line and "locked by another generator" in line
        assert f"pid={holder.pid}" in line and "host=" in line and "since" in line
        with pytest.raises(InputError, match=f"pid={holder.pid}"):  # also refused within this process
            acquire_lock(path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        third = subprocess.run([sys.executable, "-c", TRY, str(path)], capture_output=True, text=True, timeout=60)
        assert third.returncode == 0 and "ACQUIRED" in third.stdout, third.stdout + third.stderr
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_lock_release_and_create_keeps_lock_file(tmp_path):
    path = tmp_path / "ds"
    with acquire_lock(path) as lock:
        assert lock.held
        # creating (and overwriting) the dataset under a held lock keeps the lock file
        create_dataset(path, SCHEMA, ATTRS)
        create_dataset(path, SCHEMA, ATTRS, overwrite=True)
        assert (path / ".lock").exists()
        with pytest.raises(InputError, match="locked"):
            acquire_lock(path)
    assert not lock.held
    acquire_lock(path).release()
