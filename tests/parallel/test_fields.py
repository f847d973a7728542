"""Grid decomposition pieces: the deep-halo RK4 block kernel against the serial kernels and
``integrators.rk4_step`` (bit for bit), halo-depth selection, and -- under real ``mpiexec`` -- the
deep-halo exchange against numpy replication padding and ``FieldDomain`` against serial runs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcsur.errors import InputError
from hpcsur.parallel.fields import exchanges_per_step, fused_steps, halo_depth
from hpcsur.systems import stencils
from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams
from hpcsur.systems.integrators import rk4_step

MPIEXEC = Path(sys.executable).parent / "mpiexec"
DT = 2e-5


def ac_system(n):
    return AllenCahn(AllenCahnParams(n=n, epsilon=0.1))


def random_state(n, seed=0):
    return np.random.default_rng(seed).uniform(-1.1, 1.1, n * n)


def reference_rk4(ac, x, steps):
    """RK4 with the generic integrator and the full-grid RHS (no fused kernel involved)."""
    for _ in range(steps):
        x = rk4_step(ac.rhs, x, DT)
    return x


def written_region(shape, depth, widen, sides):
    """Mask of what one ``ac_rk4_step_block`` call may write: the owned block widened by
    ``widen`` on non-physical sides, plus one ghost layer on physical sides."""
    mask = np.zeros(shape, dtype=bool)
    lo0, hi0, lo1, hi1 = (1 if phys else widen for phys in sides)
    mask[depth - lo0:shape[0] - depth + hi0, depth - lo1:shape[1] - depth + hi1] = True
    return mask


def block_run(ac, v, r0, r1, c0, c1, chain):
    """``chain`` RK4 steps of block [r0, r1) x [c0, c1) of the global field ``v`` on one halo.

    The 4·chain-deep halo is cut from ``np.pad(v, depth, mode="edge")``: the neighbours' values
    (corners included) inside the grid, replication (= the Neumann mirror) outside. Every step
    writes into a fresh all-NaN array and then reads it, so a step that reads a cell the previous
    one did not write, or writes outside its region, shows up as NaN / a failed assertion.
    """
    n0, n1 = v.shape
    depth = stencils.RK4_HALO * chain
    sides = (r0 == 0, r1 == n0, c0 == 0, c1 == n1)
    xpad = np.ascontiguousarray(np.pad(v, depth, mode="edge")[r0:r1 + 2 * depth, c0:c1 + 2 * depth])
    for j in range(chain):
        widen = stencils.RK4_HALO * (chain - 1 - j)
        out = np.full_like(xpad, np.nan)
        rings = [np.full((stencils.RING, xpad.shape[1]), np.nan) for _ in range(3)]
        stencils.ac_rk4_step_block(xpad, out, *rings, depth, widen, *sides, DT, ac.inv_h2, ac.inv_eps2)
        region = written_region(out.shape, depth, widen, sides)
        assert not np.isnan(out[region]).any(), "a cell of the step's region was not written"
        assert np.isnan(out[~region]).all(), "the block kernel wrote outside its region"
        xpad = out
    return xpad[depth:-depth, depth:-depth]


def decomposed_run(ac, v, cuts0, cuts1, chain):
    """``chain`` RK4 steps done block by block with the deep-halo kernel, reassembled."""
    new = np.full_like(v, np.nan)
    for r0, r1 in zip(cuts0[:-1], cuts0[1:]):
        for c0, c1 in zip(cuts1[:-1], cuts1[1:]):
            new[r0:r1, c0:c1] = block_run(ac, v, r0, r1, c0, c1, chain)
    return new


@pytest.mark.parametrize("n", [3, 5, 24])
@pytest.mark.parametrize("depth", [4, 6])
def test_block_kernel_with_all_sides_physical_is_the_serial_wavefront(n, depth):
    ac = ac_system(n)
    x = random_state(n, n)
    xpad = stencils.pad_with_neumann_halo(x.reshape(n, n))
    out = np.empty_like(xpad)
    rings = [np.empty((stencils.RING, n + 2)) for _ in range(3)]
    stencils.ac_rk4_step_wavefront(xpad, out, *rings, DT, ac.inv_h2, ac.inv_eps2)
    bpad = np.pad(x.reshape(n, n), depth, mode="edge")
    bout = np.full_like(bpad, np.nan)
    brings = [np.full((stencils.RING, n + 2 * depth), np.nan) for _ in range(3)]
    stencils.ac_rk4_step_block(bpad, bout, *brings, depth, 0, True, True, True, True,
                               DT, ac.inv_h2, ac.inv_eps2)
    d = depth - 1           # compare the one-cell-padded part, ghosts included
    assert np.array_equal(bout[d:-d, d:-d], out)
    assert np.array_equal(bout[depth:-depth, depth:-depth].ravel(), reference_rk4(ac, x, 1))


# Blocks are at least 4·chain cells thick, as FieldDomain guarantees: the widened spans of a
# chained step then stay inside the grid (they never reach past a physical boundary).
@pytest.mark.parametrize("cuts0, cuts1, chain", [
    ([0, 12, 24], [0, 24], 1),              # [2, 1] slabs
    ([0, 12, 24], [0, 24], 3),
    ([0, 24], [0, 12, 24], 2),              # [1, 2]
    ([0, 12, 24], [0, 12, 24], 1),          # [2, 2]: corners come from the diagonal block
    ([0, 12, 24], [0, 12, 24], 3),
    ([0, 4, 8, 20, 24], [0, 5, 19, 24], 1), # uneven, 4-cell blocks (the thinnest allowed)
    ([0, 8, 16, 24], [0, 9, 24], 2),        # uneven, 8-cell blocks
])
def test_chained_block_steps_on_sub_blocks_are_bit_identical(cuts0, cuts1, chain):
    n = 24
    ac = ac_system(n)
    x = random_state(n, 1)
    want = reference_rk4(ac, x, 2 * chain)
    v = x.reshape(n, n)
    for _ in range(2):      # two exchanges (re-cut from the global field) of `chain` steps each
        v = decomposed_run(ac, v, cuts0, cuts1, chain)
    assert np.array_equal(v.ravel(), want)
    assert np.array_equal(v.ravel(), ac.integrate(x, DT, 2 * chain))


@pytest.mark.parametrize("depth, widen", [(3, 0), (7, 4), (8, -1)])
def test_block_kernel_rejects_a_halo_too_shallow_for_the_widening(depth, widen):
    ac = ac_system(8)
    xpad = np.zeros((8 + 2 * depth, 8 + 2 * depth))
    rings = [np.zeros((stencils.RING, xpad.shape[1])) for _ in range(3)]
    with pytest.raises(ValueError, match="RK4_HALO"):
        stencils.ac_rk4_step_block(xpad, np.zeros_like(xpad), *rings, depth, widen,
                                   True, False, True, False, DT, ac.inv_h2, ac.inv_eps2)


@pytest.mark.parametrize("is_2d, method, shape, grid, per_exchange, want", [
    (True, "rk4", (1024, 1024), (2, 1), 4, 4),
    (True, "rk4", (1024, 1024), (2, 1), 1, 1),
    (True, "rk4", (26, 26), (2, 2), 4, 3),  # 13-cell blocks hold a 12-deep halo, not 16
    (True, "rk4", (8, 8), (2, 2), 4, 1),    # 4-cell blocks: one step per exchange
    (True, "rk4", (9, 9), (1, 3), 4, 0),    # 3-cell blocks: one exchange per stage instead
    (True, "euler", (64, 64), (2, 1), 4, 0),
    (False, "rk4", (50,), (2,), 4, 0),
])
def test_fused_steps_halo_depth_and_exchanges_per_step(is_2d, method, shape, grid, per_exchange, want):
    assert fused_steps(is_2d, method, shape, grid, per_exchange) == want
    assert halo_depth(is_2d, method, shape, grid, per_exchange) == (4 * want if want else 1)
    per_step = exchanges_per_step(is_2d, method, shape, grid, per_exchange)
    assert per_step == (1 / want if want else 4 if method == "rk4" else 1)


# ------------------------------------------------------------------------------ under mpiexec
WORKER = r"""
import json, sys
import numpy as np
from mpi4py import MPI
from hpcsur.parallel.fields import FieldDomain
from hpcsur.parallel.grid import CartGrid, GridHalo, block_range
from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams
from hpcsur.systems.integrators import rk4_step, euler_step
from hpcsur.systems.predator_prey import PredatorPrey, PredatorPreyParams

comm = MPI.COMM_WORLD
size, rank = comm.Get_size(), comm.Get_rank()
failures, checks = [], []

def check(name, ok):
    checks.append(name)
    if not ok:
        failures.append(f"rank {rank}: {name}")

# 1. Halo exchange == numpy replication padding of the global field, every cell of the pad.
grids_2d = {1: [[1, 1]], 2: [[2, 1], [1, 2]], 4: [[2, 2], [4, 1]]}[size]
for dims in grids_2d:
    for depth in (1, 4):
        for shape in ((17, 19), (16, 8)):
            if any(n // p < depth for n, p in zip(shape, dims)):
                continue
            g = np.random.default_rng(7).random((2,) + shape)        # two fields
            cart = CartGrid.create(comm, dims)
            (r0, r1), (c0, c1) = [block_range(n, p, c) for n, p, c in zip(shape, dims, cart.coords)]
            pad = np.full((2, r1 - r0 + 2 * depth, c1 - c0 + 2 * depth), np.nan)
            pad[:, depth:-depth, depth:-depth] = g[:, r0:r1, c0:c1]
            halo = GridHalo(cart, 2, depth)
            halo.exchange(pad)
            halo.exchange(pad)                                      # reusing the buffers
            want = np.pad(g, ((0, 0), (depth, depth), (depth, depth)), mode="edge")
            want = want[:, r0:r1 + 2 * depth, c0:c1 + 2 * depth]
            check(f"2-D exchange dims={dims} depth={depth} shape={shape}", np.array_equal(pad, want))
for depth in (1, 2):
    n = 11
    g = np.random.default_rng(8).random((2, n))
    cart = CartGrid.create(comm, [size])
    a, b = block_range(n, size, cart.coords[0])
    pad = np.full((2, b - a + 2 * depth), np.nan)
    pad[:, depth:-depth] = g[:, a:b]
    GridHalo(cart, 1, depth).exchange(pad)
    want = np.pad(g, ((0, 0), (depth, depth)), mode="edge")[:, a:b + 2 * depth]
    check(f"1-D exchange depth={depth}", np.array_equal(pad, want))

# 2. FieldDomain == serial runs, bit for bit (state and labels): chained deep-halo runs (k > 1,
#    runs cut short by advance(2) + advance(3)), one step per exchange, and the 1-cell fallback.
dt = 2e-5
for n, dims in {1: [(13, [1, 1])], 2: [(26, [2, 1]), (26, [1, 2]), (7, [2, 1])],
                4: [(26, [2, 2]), (26, [4, 1]), (9, [1, 4])]}[size]:
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=0.1))
    x = np.random.default_rng(n).uniform(-1.1, 1.1, n * n)
    idx = np.array([n * n - 1, 0, n + 5, n * (n // 2) + n // 2, n - 1])
    for method, step, per_exchange in (("rk4", rk4_step, 3), ("rk4", rk4_step, 1), ("euler", euler_step, 3)):
        want = x
        for _ in range(5):
            want = step(ac.rhs, want, dt)
        dom = FieldDomain(ac, dt, comm, dims, method, steps_per_exchange=per_exchange)
        dom.load(x)
        dom.advance(2)
        dom.advance(3)
        got = dom.gather(0)
        labels = dom.labels(idx, 0)
        thinnest = min(n // p for p in dims)
        chain = min(per_exchange, thinnest // 4) if method == "rk4" else 0
        what = f"allen_cahn n={n} {dims} {method} k<={per_exchange}"
        check(f"{what}: chain {dom.chain} depth {dom.depth}", dom.chain == chain and dom.depth == (4 * chain or 1))
        if rank == 0:
            check(f"{what}: state", np.array_equal(got, want))
            check(f"{what}: labels", np.array_equal(labels, ac.partial_rhs(want, idx)))
pp = PredatorPrey(PredatorPreyParams(n=10, diffusion_u=0.3))
x = pp.initial_state(0.1, 0.5)
for method in ("rk4", "euler"):
    want = x
    stepper = pp.stepper(0.01, method=method)
    for _ in range(6):
        want = stepper(want)
    dom = FieldDomain(pp, 0.01, comm, [size], method)
    dom.load(x)
    dom.advance(6)
    got = dom.gather(0)
    labels = dom.labels(np.array([9, 0, 4]), 0)
    if rank == 0:
        check(f"predator_prey {method}: state", np.array_equal(got, want))
        check(f"predator_prey {method}: labels",
              np.array_equal(labels, pp.partial_rhs(want, np.array([9, 0, 4]))))

all_failures = comm.gather(failures, 0)
if rank == 0:
    print(json.dumps({"checks": len(checks), "failures": sum(all_failures, [])}))
"""


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_halo_exchange_and_field_domain_under_mpiexec(tmp_path, ranks):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, str(script)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["checks"] > 10
    assert report["failures"] == []


def test_bad_halo_depth_and_steps_per_exchange_are_rejected():
    from hpcsur.parallel.fields import FieldDomain
    from hpcsur.parallel.grid import GridHalo

    with pytest.raises(InputError, match="halo depth"):
        GridHalo(grid=None, ndim=2, depth=0)
    with pytest.raises(InputError, match="steps_per_exchange"):
        FieldDomain(ac_system(8), DT, comm=None, grid=[1, 1], integrator="rk4", steps_per_exchange=0)
