"""Create, write every shard, read back bit-exact; partial stores; idempotent rewrites."""
import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.store import (DatasetSchema, ShardWriter, completed_shards, create_dataset, info,
                          open_dataset, rank_shards, shard_order, synthetic_shard, write_shard)
from hpcsur.store.manifest import read_record

ATTRS = dict(system="lennard_jones", params={"epsilon": 1.0, "sigma": 1.0, "n_atoms": 4},
             layout={"m": 3, "n": 4, "fields": ["force"]}, p=0.5, seed=7, dt=0.005,
             save_every=2, steps=20, note=np.float64(1.5))
SCHEMA = DatasetSchema(n_traj=3, frames_per_traj=10, n_state=12, k=2, m=3, n_obs=5,
                       full_labels=True, frames_per_shard=5, chunk_frames=5)


def full_store(tmp_path, schema=SCHEMA):
    path = tmp_path / "ds"
    create_dataset(path, schema, ATTRS)
    w = ShardWriter(path)
    blocks = {s: synthetic_shard(schema, s) for s in range(schema.n_shards)}
    for s, b in blocks.items():
        w.write(s, b)
    return path, blocks


def test_write_all_read_back_bit_exact(tmp_path):
    path, blocks = full_store(tmp_path)
    ds = open_dataset(path)
    assert (ds.n_traj, ds.frames_per_traj, ds.schema) == (3, 10, SCHEMA)
    S = SCHEMA.frames_per_shard
    for traj in range(3):
        got = ds.frames(traj)
        for name in SCHEMA.arrays():
            want = np.concatenate([blocks[2 * traj][name], blocks[2 * traj + 1][name]])
            assert got[name].dtype == np.dtype(SCHEMA.arrays()[name].dtype)
            np.testing.assert_array_equal(got[name], want.astype(got[name].dtype))
        np.testing.assert_array_equal(got["traj"], traj)
    # a range crossing the shard boundary inside a trajectory, and a global range crossing trajectories
    part = ds.frames(1, 3, 8, arrays=["x", "step"])
    np.testing.assert_array_equal(part["x"], np.concatenate([blocks[2]["x"][3:], blocks[3]["x"][:3]]))
    assert set(part) == {"x", "step"}
    g = ds.global_frames(8, 12)
    np.testing.assert_array_equal(g["f_partial"], np.concatenate([blocks[1]["f_partial"][3:],
                                                                  blocks[2]["f_partial"][:2]]))
    assert ds.complete_mask().all() and len(ds.complete_mask()) == 30
    assert ds.shard(4)["phi"].tobytes() == blocks[4]["phi"].tobytes()


def test_attrs_round_trip(tmp_path):
    path, _ = full_store(tmp_path)
    a = open_dataset(path).attrs
    for key in ("system", "params", "layout", "p", "seed", "dt", "save_every", "steps"):
        assert a[key] == ATTRS[key]
    assert a["note"] == 1.5  # numpy scalar stored as plain JSON
    assert (a["T"], a["F"], a["k"], a["frames_per_shard"]) == (3, 10, 2, 5)
    assert a["schema"] == SCHEMA.to_dict()
    assert len(a["spec_hash"]) == 16 and a["hpcsur_version"] and a["created"]
    i = info(path)
    assert i["completeness"] == 1.0 and i["frames_complete"] == 30 and i["bytes_on_disk"] > 0


def test_create_refuses_existing_unless_asked(tmp_path):
    path, _ = full_store(tmp_path)
    with pytest.raises(InputError, match="already exists"):
        create_dataset(path, SCHEMA, ATTRS)
    assert create_dataset(path, SCHEMA, ATTRS, resume=True) is False   # same spec: resume keeps data
    assert completed_shards(path) == set(range(6))
    with pytest.raises(InputError, match=r"attrs.seed is 7 on disk, 8 requested"):
        create_dataset(path, SCHEMA, {**ATTRS, "seed": 8}, resume=True)
    assert create_dataset(path, SCHEMA, ATTRS, overwrite=True) is True
    assert completed_shards(path) == set()
    assert np.isnan(open_dataset(path).frames(0)["x"]).all()
    with pytest.raises(InputError, match="attrs.dt: required"):
        create_dataset(tmp_path / "other", SCHEMA, {k: v for k, v in ATTRS.items() if k != "dt"})
    # store-stamped keys from the caller are replaced and don't change the spec hash (resume works)
    stamped = {**ATTRS, "created": "yesterday", "hpcsur_version": "0.0.1"}
    assert create_dataset(path, SCHEMA, stamped, resume=True) is False
    assert open_dataset(path).attrs["created"] != "yesterday"
    with pytest.raises(InputError, match="attrs.spec_hash: reserved"):
        create_dataset(tmp_path / "other", SCHEMA, {**ATTRS, "spec_hash": "x"})
    with pytest.raises(InputError, match="attrs.T"):
        create_dataset(tmp_path / "other", SCHEMA, {**ATTRS, "T": 4})


def test_bad_blocks_rejected_with_one_line(tmp_path):
    path = tmp_path / "ds"
    create_dataset(path, SCHEMA, ATTRS)
    good = synthetic_shard(SCHEMA, 1)
    cases = [({**good, "x": good["x"][:4]}, "array 'x' has shape"),
             ({k: v for k, v in good.items() if k != "phi"}, "array 'phi' missing"),
             ({**good, "z": good["x"]}, "unknown array 'z'"),
             ({**good, "traj": good["traj"] + 1}, "'traj' must be 0"),
             ({**good, "step": good["step"] * 1.0}, "expected integers")]
    for block, msg in cases:
        with pytest.raises(InputError, match=msg) as e:
            write_shard(path, 1, block)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="owned by rank 1, not rank 0"):
        ShardWriter(path, rank=0, size=2).write(1, good)
    with pytest.raises(InputError, match="shard: expected an integer in"):
        write_shard(path, 6, good)
    assert completed_shards(path) == set()


def test_partial_store_and_idempotent_rewrite(tmp_path):
    path = tmp_path / "ds"
    create_dataset(path, SCHEMA, ATTRS)
    w = ShardWriter(path)
    for s in (0, 3, 4):
        w.write(s, synthetic_shard(SCHEMA, s))
    assert completed_shards(path) == {0, 3, 4}
    assert w.todo() == [1, 2, 5]
    ds = open_dataset(path)
    mask = ds.complete_mask()
    np.testing.assert_array_equal(mask, np.repeat([1, 0, 0, 1, 1, 0], 5).astype(bool))
    assert np.isnan(ds.frames(0, 5, 10)["x"]).all() and (ds.frames(0, 5, 10)["idx"] == -1).all()
    before = read_record(path, 3)
    w.write(3, synthetic_shard(SCHEMA, 3))  # rewrite the same data
    after = read_record(path, 3)
    assert after.files == before.files      # same bytes on disk, same checksums
    # iter_shards only hands out completed shards
    got = [s for r in range(2) for s, _ in ds.iter_shards(r, 2, epoch=0, seed=1)]
    assert sorted(got) == [0, 3, 4]


def test_all_fill_value_shard_is_still_a_file(tmp_path):
    # zarr skips writing chunks equal to the fill value unless told otherwise; the writer tells it,
    # so a legitimately all-NaN array still has a file that verify can check.
    path = tmp_path / "ds"
    create_dataset(path, SCHEMA, ATTRS)
    block = synthetic_shard(SCHEMA, 0)
    block["f_full"] = np.full_like(block["f_full"], np.nan)
    write_shard(path, 0, block)
    assert read_record(path, 0).files["f_full"].sha256 is not None


def test_iter_shards_disjoint_cover_and_seeded(tmp_path):
    path, blocks = full_store(tmp_path)
    ds = open_dataset(path)
    for size in (1, 2, 4):
        parts = [[s for s, _ in ds.iter_shards(r, size, epoch=3, seed=11)] for r in range(size)]
        flat = [s for p in parts for s in p]
        assert sorted(flat) == list(range(6)) and len(set(flat)) == 6
    s, arrays = next(ds.iter_shards(0, 1, 0, 0, arrays=["x"]))
    np.testing.assert_array_equal(arrays["x"], blocks[s]["x"])
    ids = list(range(40))
    assert shard_order(ids, 1, 5) == shard_order(list(reversed(ids)), 1, 5)  # depends on the set only
    assert shard_order(ids, 1, 5) != shard_order(ids, 2, 5)                  # epoch reshuffles
    assert shard_order(ids, 1, 5) != shard_order(ids, 1, 6)                  # seed reshuffles
    eq = [rank_shards(ids[:7], r, 3, 0, 0, drop_last=True) for r in range(3)]
    assert [len(p) for p in eq] == [2, 2, 2]


def test_progress_is_the_one_answer_to_complete(tmp_path):
    from hpcsur.store import progress

    path = tmp_path / "ds"
    assert not progress(path).exists and not progress(path).complete and progress(path).frames_total is None
    create_dataset(path, SCHEMA, ATTRS)
    assert (progress(path).shards_done, progress(path).shards_total, progress(path).missing) == (0, 6, 6)
    for s in range(6):
        assert not progress(path).complete
        write_shard(path, s, synthetic_shard(SCHEMA, s))
        assert progress(path).frames_done == 5 * (s + 1)
    assert progress(path).complete and progress(path).frames_total == 30


def test_explicit_ownership_refuses_other_shards(tmp_path):
    path = tmp_path / "ds"
    create_dataset(path, SCHEMA, ATTRS)
    writer = ShardWriter(path, rank=1, size=2, owned=[0, 1])   # a whole trajectory, not the round robin
    assert writer.owned() == [0, 1] and writer.todo() == [0, 1]
    writer.write(0, synthetic_shard(SCHEMA, 0))
    assert writer.todo() == [1]
    with pytest.raises(InputError, match="shard 3: owned by another rank, not rank 1"):
        writer.write(3, synthetic_shard(SCHEMA, 3))
    with pytest.raises(InputError, match="shard"):
        ShardWriter(path, rank=0, size=2, owned=[9])
