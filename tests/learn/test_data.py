"""Streaming batches from a real sharded store: disjoint shards per worker, determinism, resume
replay, reader modes, memory budget, statistics."""
import numpy as np
import pytest
import torch

from hpcsur import store as zstore
from hpcsur.errors import InputError
from hpcsur.learn.data import BatchStream, Piece, ShuffleBuffer, Split, frame_moments, pieces, split_pieces

SCHEMA = zstore.DatasetSchema(n_traj=6, frames_per_traj=20, n_state=64, k=2, m=1, n_obs=1, full_labels=False,
                              frames_per_shard=5, chunk_frames=5)
ATTRS = {"system": "test", "params": {}, "layout": {"block_size": 1, "n_blocks": 64, "fields": ["x"]}, "p": 0.1,
         "seed": 0, "dt": 0.1, "save_every": 1, "steps": 19}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "store"
    zstore.create_dataset(path, SCHEMA, ATTRS)
    for s in range(SCHEMA.n_shards):
        block = zstore.synthetic_shard(SCHEMA, s, seed=1)
        block["step"] = np.arange(*SCHEMA.shard_frames(s))  # the global frame id, to track frames
        zstore.write_shard(path, s, block)
    return str(path)


def frame_ids(batches):
    return [int(g) for b in batches for g in b["step"]]


def test_pieces_cover_a_frame_range_exactly():
    sel = pieces((3, 17), 5)
    assert sel == {0: Piece(0, 3, 5), 1: Piece(1, 0, 5), 2: Piece(2, 0, 5), 3: Piece(3, 0, 2)}
    assert sum(p.frames for p in sel.values()) == 14


def test_split_ranges():
    sp = Split(n_traj=10, frames_per_traj=20, validation=2, test=3)
    assert sp.frames("train") == (0, 100) and sp.frames("validation") == (100, 140)
    assert sp.frames("test") == (140, 200) and list(sp.trajectories("test")) == [7, 8, 9]


def test_workers_read_disjoint_shards_and_take_equal_steps(store_path):
    streams = [BatchStream(store_path, ["x", "step"], (0, 100), 4, rank=r, size=2, seed=3) for r in range(2)]
    for epoch in range(3):
        ids = [frame_ids(s.batches(epoch)) for s in streams]
        assert len(ids[0]) == len(ids[1]) == streams[0].steps(epoch) * 4 > 0
        shards = [{g // 5 for g in i} for i in ids]
        assert not shards[0] & shards[1]                      # disjoint shards
        for i in ids:
            assert len(set(i)) == len(i) and all(0 <= g < 100 for g in i)   # no duplicates, in selection
    # a new epoch deals the shards differently
    assert {g // 5 for g in frame_ids(streams[0].batches(0))} != {g // 5 for g in frame_ids(streams[0].batches(1))}


def test_batches_are_a_pure_function_of_seed_epoch_rank(store_path):
    a = BatchStream(store_path, ["x", "step"], (0, 100), 4, rank=1, size=2, seed=3)
    b = BatchStream(store_path, ["x", "step"], (0, 100), 4, rank=1, size=2, seed=3)
    c = BatchStream(store_path, ["x", "step"], (0, 100), 4, rank=1, size=2, seed=4)
    assert frame_ids(a.batches(2)) == frame_ids(b.batches(2)) != frame_ids(c.batches(2))


def test_resume_replays_and_skips(store_path):
    s = BatchStream(store_path, ["x", "step"], (0, 100), 4, seed=5)
    full = list(s.batches(1))
    tail = list(s.batches(1, skip=7))
    assert len(tail) == len(full) - 7
    for x, y in zip(full[7:], tail):
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["step"], y["step"])


def test_cache_stream_and_spawned_readers_give_the_same_batches(store_path):
    frame_bytes = 64 * 8 + 8
    cached = BatchStream(store_path, ["x", "step"], (0, 100), 4, seed=6, shuffle_buffer=16)
    streamed = BatchStream(store_path, ["x", "step"], (0, 100), 4, seed=6, shuffle_buffer=16,
                           memory_mb=(3 * 5 + 16) * frame_bytes / 2 ** 20)
    spawned = BatchStream(store_path, ["x", "step"], (0, 100), 4, seed=6, shuffle_buffer=16, loader_workers=1)
    assert not cached.streaming and streamed.streaming and streamed.capacity == 16
    ref = frame_ids(cached.batches(0))
    assert frame_ids(streamed.batches(0)) == ref
    assert frame_ids(spawned.batches(0)) == ref
    x_ref = torch.cat([b["x"] for b in cached.batches(0)])
    x_sp = torch.cat([b["x"] for b in spawned.batches(0)])
    assert torch.equal(x_ref, x_sp) and x_ref.dtype == torch.float32


def test_all_frames_covers_the_selection_once(store_path):
    seen = []
    for r in range(3):
        s = BatchStream(store_path, ["step"], (20, 60), 3, rank=r, size=3, training=False)
        seen += frame_ids(s.all_frames())
    assert sorted(seen) == list(range(20, 60))


def test_fewer_shards_than_workers_are_cut_into_disjoint_pieces(store_path, caplog):
    """One shard of 5 frames, 2 workers, batch 4 (the scan's L_z on one 250-frame trajectory, 2 x 128): each worker
    gets its own part of the shard, together all of it, and one step an epoch on all its frames (batch 2)."""
    streams = [BatchStream(store_path, ["x", "step"], (5, 10), 4, rank=r, size=2, seed=3) for r in range(2)]
    assert "one step an epoch" in caplog.text
    for epoch in range(3):
        ids = [frame_ids(s.batches(epoch)) for s in streams]
        assert [s.steps(epoch) for s in streams] == [1, 1] and [len(i) for i in ids] == [2, 2]
        assert not set(ids[0]) & set(ids[1]) and set(ids[0]) | set(ids[1]) <= set(range(5, 10))
    cut = split_pieces({1: Piece(1, 0, 5), 3: Piece(3, 1, 5, 2)}, 2)   # a strided piece: frames 1 and 3
    assert cut == {0: Piece(1, 0, 2), 1: Piece(1, 2, 5), 2: Piece(3, 1, 2, 2), 3: Piece(3, 3, 4, 2)}
    assert sum(p.frames for p in cut.values()) == 7


def test_memory_budget_and_worker_count_errors_are_one_line(store_path):
    with pytest.raises(InputError, match=r"memory_mb = .* too small") as err:
        BatchStream(store_path, ["x"], (0, 100), 32, memory_mb=0.01)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"workers = 4: the 3 frame\(s\) of this selection leave a worker"):
        BatchStream(store_path, ["x"], (0, 3), 1, rank=0, size=4)
    with pytest.raises(InputError, match="has no array 'jf'"):
        BatchStream(store_path, ["jf"], (0, 10), 2)


def test_incomplete_shards_are_refused(tmp_path):
    path = tmp_path / "partial"
    zstore.create_dataset(path, SCHEMA, ATTRS)
    zstore.write_shard(path, 0, zstore.synthetic_shard(SCHEMA, 0))
    with pytest.raises(InputError, match="shard 1 is incomplete"):
        BatchStream(str(path), ["x"], (0, 10), 2)


def test_shuffle_buffer_takes_without_loss_or_duplication():
    buf = ShuffleBuffer(10, np.random.default_rng(0))
    buf.put({"a": np.arange(10)}, 0, 10)
    taken = np.concatenate([buf.take(3)["a"], buf.take(3)["a"]])
    rest = buf.data["a"][buf.slots[:buf.n]]
    assert sorted(np.concatenate([taken, rest]).tolist()) == list(range(10))
    assert buf.n == 4
    buf.put({"a": np.arange(10, 16)}, 0, 6)            # refills the freed slots
    assert sorted(buf.data["a"][buf.slots[:buf.n]].tolist()) == sorted(rest.tolist() + list(range(10, 16)))
    assert buf.take_first(2)["a"].tolist() == rest[:2].tolist()


def test_frame_moments_match_numpy(store_path):
    mean, std, count = frame_moments(store_path, "x", (7, 63))
    x = zstore.open_dataset(store_path).global_frames(7, 63, ["x"])["x"]
    assert count == 56
    assert np.allclose(mean, x.mean(0), atol=1e-13) and np.allclose(std, x.std(0, ddof=1), atol=1e-13)


@pytest.mark.parametrize("size", [2, 3, 50])
def test_frame_sums_of_the_parts_add_up_to_the_moments(store_path, size):
    """The workers' shares of the shards (more workers than shards included) add up to the serial moments."""
    from hpcsur.learn.data import frame_sums, moments_from_sums

    parts = [frame_sums(store_path, "x", (7, 63), part=(rank, size)) for rank in range(size)]
    assert all(np.array_equal(parts[0][0], p[0]) for p in parts)           # one shift for every part
    assert sum(p[3] for p in parts) == 56
    mean, std, count = moments_from_sums(parts[0][0], sum(p[1] for p in parts), sum(p[2] for p in parts),
                                         sum(p[3] for p in parts))
    want = frame_moments(store_path, "x", (7, 63))
    assert count == 56 and np.allclose(mean, want[0], atol=1e-13) and np.allclose(std, want[1], atol=1e-13)


def test_observable_floor_keeps_each_trajectory_until_its_observable_has_decayed():
    """The Allen-Cahn rule on a tiny grid: the free energy of a torus decays to ~0 when it vanishes; the frames
    from the first one at or below floor x (the trajectory's largest value) on are out of use."""
    from hpcsur.learn.data import Split, observable_cuts, pieces
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams

    ac = AllenCahn(AllenCahnParams(n=16, epsilon=0.15))
    step = ac.stepper(3.9e-4)
    energies = []
    for r1, r2 in ((0.4, 0.15), (0.3, 0.1)):
        x, e = ac.torus(r1, r2), []
        for _ in range(40):
            e.append(ac.free_energy(x))
            for _ in range(50):
                x = step(x)
        energies.append(e)
    phi = np.array(energies)
    cuts = observable_cuts(phi, 1e-4)
    for t, cut in enumerate(cuts):
        kept, dropped = phi[t, :cut], phi[t, cut:]
        assert np.all(kept > 1e-4 * phi[t].max()) and (dropped.size == 0 or dropped[0] <= 1e-4 * phi[t].max())
    assert 0 < min(cuts) and max(cuts) < 40          # both tori vanish within the run here
    assert observable_cuts(np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]), 0.5) == (2, 3)
    # shards of 8 frames, trajectories of 40: the selection keeps a contiguous piece of each shard
    sel = pieces((0, 80), 8, cuts, 40)
    assert sum(p.frames for p in sel.values()) == sum(cuts)
    assert all(p.start == 0 and 0 < p.stop <= 8 for p in sel.values())
    split = Split(n_traj=4, frames_per_traj=40, validation=1, test=1, cuts=(*cuts, 5, 7))
    assert split.kept("train") == sum(cuts) and split.kept("test") == 7
    g0, g1 = split.first_kept("train", cuts[0] + 3)
    assert (g0, g1) == (0, 43) and sum(p.frames for p in pieces((g0, g1), 8, split.cuts, 40).values()) == cuts[0] + 3


def test_errors_skip_the_frames_out_of_use():
    from hpcsur.learn.rollout import trajectory_errors

    true = np.array([[[1.0], [2.0]], [[1.0], [np.nan]], [[1.0], [np.nan]]])      # (F=3, T=2, 1)
    pred = np.array([[[1.0], [2.0]], [[1.5], [9.0]], [[1.0], [np.inf]]])
    e_sq, e_abs = trajectory_errors(pred, true)
    np.testing.assert_allclose(e_abs, [0.5 / 3.0, 0.0])
    np.testing.assert_allclose(e_sq, [0.25 / 3.0, 0.0])


def test_the_observables_plot_draws_only_the_scored_frames(tmp_path, monkeypatch):
    """A rollout past a trajectory's last frame in use (its truth NaN under observable_floor) is neither scored nor
    drawn: every line of that panel ends at the last finite truth frame, a full trajectory's panel keeps them all."""
    import matplotlib.axes

    from hpcsur.learn.evaluate import plot_observables, scored_span

    t = np.linspace(0.0, 1.0, 12)
    truth = np.ones((12, 2, 1))
    truth[7:, 0] = np.nan                               # trajectory 0: in use for frames 0 .. 6
    assert scored_span(truth, 0) == 7 and scored_span(truth, 1) == 12
    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, *a, **k: (drawn.append(len(x)), original(self, x, *a, **k))[1])
    plot_observables(tmp_path / "obs.png", t, truth, {"model": np.full((12, 2, 1), 2.0)}, ["E"], n_traj=2)
    assert drawn == [7, 7, 12, 12] and (tmp_path / "obs.png").stat().st_size > 1000


@pytest.mark.parametrize("phases", [None, (0, 7, 2, 6, 1)])
def test_strided_selection_equals_a_brute_force_mask(phases):
    """[labels] full_every = r: the L_z / L_x frames are trajectory frames o_t, o_t + r, ... in use (o_t the store's
    full_phases, or 0); pieces, kept and first_kept must select exactly the frames a per-frame mask over the store
    selects -- also where a trajectory's phase lies past its frames in use (trajectory 3: phase 6, 5 in use)."""
    F, S, cuts = 40, 8, (33, 40, 17, 5, 40)
    split = Split(n_traj=5, frames_per_traj=F, validation=1, test=1, cuts=cuts, phases=phases)
    frame = np.arange(5 * F)
    in_use = (frame % F) < np.repeat(cuts, F)
    for r in (1, 3, 8, 11):
        offset = np.repeat(phases, F) % r if phases is not None and r > 1 else 0   # the phases drawn for this r
        split_r = Split(5, F, 1, 1, cuts, None if phases is None else tuple(int(o) % r for o in phases))
        mask = in_use & ((frame % F) >= offset) & ((frame % F - offset) % r == 0)
        train = mask & (frame < 3 * F)
        assert split_r.kept("train", r) == train.sum()
        for count in (1, 4, int(train.sum())):
            g0, g1 = split_r.first_kept("train", count, r)
            chosen = np.flatnonzero(train & (frame < g1))
            assert g0 == 0 and len(chosen) == count and chosen[-1] == g1 - 1
            sel = pieces((g0, g1), S, cuts, F, r, split_r.phases)
            picked = np.concatenate([p.shard * S + np.arange(S)[p.rows] for p in sel.values()])
            np.testing.assert_array_equal(picked, chosen)
            assert sum(p.frames for p in sel.values()) == count
        with pytest.raises(InputError, match="frames asked for"):
            split_r.first_kept("train", int(train.sum()) + 1, r)
    assert split.phase(1, 3) == (0 if phases is None else 7) and split.phase(1, 1) == 0   # stride 1: every frame


def test_seed_disagreement_is_e_abs_against_the_last_seed_on_the_scored_points():
    """The reference's test() as written: each seed against the last seed's prediction (a brute-force loop here),
    on the points the truth scores; identical seeds disagree by 0; one seed has none."""
    from hpcsur.learn.evaluate import seed_disagreement

    rng = np.random.default_rng(3)
    true = rng.normal(size=(6, 4, 2)) + 3.0
    true[4:, 1] = np.nan                                          # trajectory 1 out of use from frame 4
    preds = [true + 0.1 * rng.normal(size=true.shape) for _ in range(3)]
    preds = [np.nan_to_num(p, nan=7.0) for p in preds]            # rollouts are finite everywhere
    got = seed_disagreement(preds, true)
    for seed, pred in enumerate(preds[:-1]):
        per_traj = []
        for k in range(true.shape[1]):
            rows = [f for f in range(true.shape[0]) if np.isfinite(true[f, k]).all()]
            diff = sum(np.linalg.norm(pred[f, k] - preds[-1][f, k]) for f in rows)
            per_traj.append(diff / sum(np.linalg.norm(preds[-1][f, k]) for f in rows))
        assert got["per_seed"][seed] == pytest.approx(np.mean(per_traj), rel=1e-12)
    assert got["e_abs"]["mean"] == pytest.approx(np.mean(got["per_seed"]))
    assert seed_disagreement([preds[0]] * 3, true)["e_abs"]["mean"] == 0.0
    assert seed_disagreement(preds[:1], true) is None


def test_velocity_error_is_the_relative_rms_of_g_minus_jf_per_latent_dimension():
    """A linear field g(z) = z A against J f = z B + noise: e_k by brute force per dimension, mean over the
    observables and median over the closure, summarised over the models; frames without J f are left out."""
    import torch
    from hpcsur.learn.evaluate import velocity_error

    class Linear(torch.nn.Module):
        def __init__(self, a):
            super().__init__()
            self.a = torch.nn.Parameter(torch.from_numpy(a))

        def forward(self, z):
            return z @ self.a

    rng = np.random.default_rng(5)
    z = rng.normal(size=(40, 4))
    b = rng.normal(size=(4, 4))
    jf = z @ b
    jf[::7] = np.nan                                             # frames without all forces
    models = [Linear(b + 0.05 * k * rng.normal(size=(4, 4))) for k in (1, 2)]
    got = velocity_error(models, z, jf, n_obs=1)
    keep = np.isfinite(jf).all(-1)
    assert got["frames"] == int(keep.sum())
    for model, obs, closure in zip(models, got["observables"]["values"], got["closure_median"]["values"]):
        g = z[keep] @ model.a.detach().numpy()
        e = [np.sqrt(np.mean((g[:, k] - jf[keep, k]) ** 2)) / np.std(jf[keep, k], ddof=1) for k in range(4)]
        assert obs == pytest.approx(e[0], rel=1e-12) and closure == pytest.approx(np.median(e[1:]), rel=1e-12)
    assert velocity_error([Linear(b)], z, jf, 1)["closure_median"]["values"] == [pytest.approx(0.0, abs=1e-14)]
    assert velocity_error(models, z, np.full_like(jf, np.nan), 1) is None
