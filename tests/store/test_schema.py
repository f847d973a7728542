"""Pure layout helpers: shard sizing, chunk sizing, shard ownership, schema validation."""
import pytest

from hpcsur.errors import InputError
from hpcsur.store.schema import (DatasetSchema, choose_chunk_frames, choose_frames_per_shard,
                                 make_schema, owned_shards, shard_frame_range, shard_owner, spec_hash)


@pytest.mark.parametrize("F", [1, 7, 12, 250, 1000, 997])
@pytest.mark.parametrize("bpf,target", [(8, 64), (1000, 10_000), (10**6, 64 * 2**20), (10**9, 10**6)])
def test_frames_per_shard_divides_F_and_fits(F, bpf, target):
    S = choose_frames_per_shard(F, bpf, target)
    assert F % S == 0
    assert S == 1 or S * bpf <= target
    # largest such divisor: the next larger divisor would overflow the target
    bigger = [d for d in range(S + 1, F + 1) if F % d == 0]
    assert not bigger or bigger[0] * bpf > target


def test_frames_per_shard_examples():
    assert choose_frames_per_shard(250, 256_000, 64 * 2**20) == 250   # 64 MB fits the whole trajectory
    assert choose_frames_per_shard(250, 768_000, 64 * 2**20) == 50    # 87 frames fit; largest divisor 50
    assert choose_frames_per_shard(7, 100, 350) == 1                  # prime F: only 1 fits
    assert choose_frames_per_shard(8, 10**9, 1) == 1                  # even one frame too big


@pytest.mark.parametrize("S", [1, 10, 50, 250, 96])
@pytest.mark.parametrize("bpf", [8, 10_000, 300_000, 5 * 2**20])
def test_chunk_frames_divides_shard_and_is_smallest_over_1MB(S, bpf):
    C = choose_chunk_frames(S, bpf, 2**20)
    assert S % C == 0
    if C * bpf < 2**20:
        assert C == S  # only when the whole shard is below the floor
    smaller = [d for d in range(1, C) if S % d == 0]
    assert all(d * bpf < 2**20 for d in smaller)


def test_make_schema_sizes_from_largest_array():
    s = make_schema(4, 250, 96_000, 375, 3, 5, full_labels=False)
    assert s.frames_per_traj % s.frames_per_shard == 0
    assert s.frames_per_shard % s.chunk_frames == 0
    assert s.frames_per_shard * 96_000 * 8 <= 64 * 2**20
    assert s.chunk_frames * 96_000 * 8 >= 2**20
    assert s.n_shards == 4 * 250 // s.frames_per_shard


def test_shard_owner_gives_each_shard_exactly_one_writer():
    for size in (1, 2, 3, 5):
        owners = {}
        for rank in range(size):
            for s in owned_shards(17, rank, size):
                assert s not in owners
                owners[s] = rank
                assert shard_owner(s, size) == rank
        assert sorted(owners) == list(range(17))
    assert shard_frame_range(3, 5) == (15, 20)


def test_schema_validation_one_line_errors():
    with pytest.raises(InputError, match="frames_per_shard.*must divide frames_per_traj=10"):
        DatasetSchema(2, 10, 4, 1, 1, 1, False, 3, 1)
    with pytest.raises(InputError, match="chunk_frames"):
        DatasetSchema(2, 10, 4, 1, 1, 1, False, 5, 2)
    with pytest.raises(InputError, match="schema.k: must be >= 1"):
        DatasetSchema(2, 10, 4, 0, 1, 1, False, 5, 1)
    with pytest.raises(InputError) as e:
        DatasetSchema(2, 10.0, 4, 1, 1, 1, False, 5, 1)
    assert "\n" not in str(e.value) and "frames_per_traj" in str(e.value)
    with pytest.raises(InputError, match="rank"):
        owned_shards(4, 2, 2)


def test_schema_dict_round_trip_and_arrays():
    s = DatasetSchema(2, 10, 4, 3, 2, 5, True, 5, 5)
    assert DatasetSchema.from_dict(s.to_dict()) == s
    arr = s.arrays()
    assert list(arr) == ["x", "t", "step", "traj", "idx", "f_partial", "phi", "f_full"]
    assert arr["f_partial"].shape == (20, 1, 3, 2) and arr["idx"].dtype == "int64"   # one draw
    drawn = DatasetSchema(2, 10, 4, 3, 2, 5, True, 5, 5, draws=3)
    assert drawn.arrays()["idx"].shape == (20, 3, 3) and drawn.arrays()["f_partial"].shape == (20, 3, 3, 2)
    enc = drawn.encoded(4).arrays()
    assert enc["lxp_R"].shape == (20, 3, 4, 4) and enc["jf_est"].shape == (20, 3, 4) and enc["jf"].shape == (20, 4)
    assert DatasetSchema.from_dict(drawn.to_dict()) == drawn
    assert "f_full" not in DatasetSchema(2, 10, 4, 3, 2, 5, False, 5, 5).arrays()
    assert spec_hash(s, {"a": 1}) != spec_hash(s, {"a": 2})
