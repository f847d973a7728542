"""Real `mpiexec -n 2`: each rank writes only its own shards of one store, concurrently."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcsur.store import DatasetSchema, open_dataset, read_manifest, synthetic_shard, verify
from hpcsur.store.manifest import read_record

MPIEXEC = Path(sys.executable).parent / "mpiexec"
SCHEMA = DatasetSchema(n_traj=4, frames_per_traj=12, n_state=3000, k=8, m=3, n_obs=4,
                       full_labels=True, frames_per_shard=4, chunk_frames=2)

SCRIPT = """
import json, sys
from mpi4py import MPI
from hpcsur.store import (DatasetSchema, ShardWriter, acquire_lock, consolidate, create_dataset,
                          synthetic_shard)

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
path, schema = sys.argv[1], DatasetSchema.from_dict(json.loads(sys.argv[2]))
attrs = dict(system="lennard_jones", params={}, layout={"m": 3, "n": 1000, "fields": ["f"]},
             p=0.008, seed=1, dt=0.005, save_every=1, steps=12)
if rank == 0:
    lock = acquire_lock(path)
    create_dataset(path, schema, attrs)
comm.Barrier()                      # arrays exist before other ranks open them
w = ShardWriter(path, rank, size)
mine = w.todo()
for s in mine:
    w.write(s, synthetic_shard(schema, s, seed=42))
comm.Barrier()                      # every shard recorded before the manifest is gathered
if rank == 0:
    consolidate(path)
    lock.release()
print(json.dumps({"rank": rank, "wrote": mine}), flush=True)
"""


@pytest.mark.mpi
def test_two_ranks_write_disjoint_shards(tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(SCRIPT)
    path = tmp_path / "ds"
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(script), str(path),
                          json.dumps(SCHEMA.to_dict())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    wrote = {d["rank"]: d["wrote"] for d in map(json.loads, out.stdout.split("\n")[:-1])}
    assert wrote == {0: list(range(0, 12, 2)), 1: list(range(1, 12, 2))}

    ds = open_dataset(path)
    for s in range(SCHEMA.n_shards):
        want = synthetic_shard(SCHEMA, s, seed=42)
        got = ds.shard(s)
        for name, arr in want.items():
            np.testing.assert_array_equal(got[name], arr.astype(got[name].dtype), err_msg=f"{name} shard {s}")
        assert read_record(path, s).rank == s % 2
    m = read_manifest(path)
    assert m["complete"] and sorted(map(int, m["shards"])) == list(range(12))
    assert verify(path).ok
