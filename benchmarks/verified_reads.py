"""Cost of verified reads: reading every shard of a store with the checksum check against without it.

The store is the demo's (``storage/predator_prey``, made by ``make demo``) when it exists, else a
Predator-Prey store of the same shape generated into a temporary folder. Each round opens a fresh
``Dataset`` (so every shard file is hashed once, as a stage does) and reads all arrays of every
shard, verified and unverified in alternating order; the page cache is warm for both after a first
untimed pass. Reports the seconds per full pass of each, the ratio, and the hashing rate. Prints one
JSON object as the last stdout line.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hpcsur.store import open_dataset
from hpcsur.store.manifest import dir_bytes

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 7


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


def full_pass(path: Path, verify: bool) -> float:
    t0 = time.perf_counter()
    ds = open_dataset(path, verify=verify)
    for s in range(ds.schema.n_shards):
        ds.shard(s)
    return time.perf_counter() - t0


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = demo_store(Path(tmp))
        full_pass(store, True)      # warm the page cache and the imports
        plain, checked = [], []
        for r in range(ROUNDS):
            order = (False, True) if r % 2 == 0 else (True, False)
            for verify in order:
                (checked if verify else plain).append(full_pass(store, verify))
        size = dir_bytes(store)
        result = {"benchmark": "verified_reads", "store": str(store), "bytes_on_disk": size,
                  "shards": open_dataset(store).schema.n_shards, "rounds": ROUNDS,
                  "s_per_pass_unverified": float(np.median(plain)), "s_per_pass_verified": float(np.median(checked)),
                  "verified_over_unverified": float(np.median(checked) / np.median(plain)),
                  "hash_MB_per_s": size / 1e6 / max(float(np.median(checked) - np.median(plain)), 1e-9)}
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
