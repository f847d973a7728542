"""Cost of verified reads: reading every shard of a store with the checksum check against without it.

The store is the demo's (``storage/predator_prey``, made by ``make demo``) when it exists, else a
Predator-Prey store of the same shape generated into a temporary folder. Each round opens a fresh
``Dataset`` (so every shard file is hashed once, as a stage does) and reads all arrays of every
shard, verified and unverified in alternating order; the page cache is warm for both after a first
untimed pass. Reports the seconds per full pass of each, the ratio, and the hashing rate.

Then the stages that read the store, as a user runs them: the demo job's ``train-ae`` and ``encode``
(one process each, into fresh run folders), with verification and with the check replaced by a no-op,
alternating, ``STAGE_ROUNDS`` times. Prints one JSON object as the last stdout line.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcsur.measure import emit, interleave
from hpcsur.store import open_dataset
from hpcsur.store.manifest import dir_bytes

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 7
STAGE_ROUNDS = 3


def demo_store(tmp: Path) -> Path:
    store = ROOT / "storage" / "predator_prey"
    if (store / "manifest.json").exists():
        return store
    job = tmp / "pp.toml"
    text = (ROOT / "jobs" / "predator_prey.toml").read_text()
    job.write_text(text)
    out = tmp / "store"
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "mpiexec"), "-n", "2", str(bindir / "hpcsur"), "generate", str(job), "--output",
                    str(out), "--no-progress"], check=True, capture_output=True)
    return out


def full_pass(path: Path, verify: bool) -> None:
    ds = open_dataset(path, verify=verify)
    for s in range(ds.schema.n_shards):
        ds.shard(s)


def stage_seconds(store: Path, run_dir: Path, verify: bool) -> dict:
    """Seconds of the demo job's train-ae and encode on ``store`` (in this process, one rank)."""
    import dataclasses

    from mpi4py import MPI

    from hpcsur.ops import stages
    from hpcsur.ops.jobspec import load_job
    from hpcsur.store.reader import Dataset

    spec = load_job(ROOT / "jobs" / "predator_prey.toml")
    spec = dataclasses.replace(spec, store=dataclasses.replace(spec.store, path=str(store)),
                               output=dataclasses.replace(spec.output, dir=str(run_dir)),
                               train=dataclasses.replace(spec.train, workers=1))
    check = Dataset._check_shard
    if not verify:
        Dataset._check_shard = lambda self, s, names: None
    try:
        t0 = time.perf_counter()
        stages.train_ae(spec, backend="none", progress=False)
        t1 = time.perf_counter()
        stages.encode(spec, MPI.COMM_WORLD, progress=False)
        t2 = time.perf_counter()
    finally:
        Dataset._check_shard = check
    return {"train-ae": t1 - t0, "encode": t2 - t1}


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = demo_store(Path(tmp))
        full_pass(store, True)      # warm the page cache and the imports
        runs = interleave({"unverified": lambda: full_pass(store, False),
                           "verified": lambda: full_pass(store, True)}, ROUNDS)
        plain, checked = runs["unverified"].wall, runs["verified"].wall
        size = dir_bytes(store)
        result = {"benchmark": "verified_reads", "store": str(store), "bytes_on_disk": size,
                  "shards": open_dataset(store).schema.n_shards, "rounds": ROUNDS,
                  "s_per_pass_unverified": float(np.median(plain)), "s_per_pass_verified": float(np.median(checked)),
                  "verified_over_unverified": float(np.median(checked) / np.median(plain)),
                  "hash_MB_per_s": size / 1e6 / max(float(np.median(checked) - np.median(plain)), 1e-9)}
        runs = {True: [], False: []}
        for r in range(STAGE_ROUNDS):
            for verify in ((False, True) if r % 2 == 0 else (True, False)):
                runs[verify].append(stage_seconds(store, Path(tmp) / f"run-{verify}-{r}", verify))
        for stage in ("train-ae", "encode"):
            on = float(np.median([t[stage] for t in runs[True]]))
            off = float(np.median([t[stage] for t in runs[False]]))
            result[f"{stage}_s_verified"], result[f"{stage}_s_unverified"] = on, off
            result[f"{stage}_verified_over_unverified"] = on / off
    return result


if __name__ == "__main__":
    emit(main())
