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
from hpcsur.parallel.fields import halo_depth
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


def block_step(ac, v, r0, r1, c0, c1, depth):
    """One ``ac_rk4_step_block`` on block [r0, r1) x [c0, c1) of the global field ``v``.

    The halo is cut from ``np.pad(v, depth, mode="edge")``: the neighbours' values (corners
    included) inside the grid, replication (= the Neumann mirror) outside. Outputs and scratch
    start as NaN, so a read of anything the kernel should have written first shows up.
    """
    n0, n1 = v.shape
    xpad = np.ascontiguousarray(np.pad(v, depth, mode="edge")[r0:r1 + 2 * depth, c0:c1 + 2 * depth])
    out = np.full_like(xpad, np.nan)
    rings = [np.full((stencils.RING, xpad.shape[1]), np.nan) for _ in range(3)]
    stencils.ac_rk4_step_block(xpad, out, *rings, depth, r0 == 0, r1 == n0, c0 == 0, c1 == n1,
                               DT, ac.inv_h2, ac.inv_eps2)
    return out


def decomposed_step(ac, v, cuts0, cuts1, depth=stencils.RK4_HALO):
    """One RK4 step done block by block with the deep-halo kernel, reassembled."""
    new = np.full_like(v, np.nan)
    for r0, r1 in zip(cuts0[:-1], cuts0[1:]):
        for c0, c1 in zip(cuts1[:-1], cuts1[1:]):
            out = block_step(ac, v, r0, r1, c0, c1, depth)
            new[r0:r1, c0:c1] = out[depth:-depth, depth:-depth]
            outside = np.ones(out.shape, dtype=bool)
            outside[depth:-depth, depth:-depth] = False
            assert np.isnan(out[outside]).all(), "the block kernel wrote outside the owned block"
    return new


@pytest.mark.parametrize("n", [3, 5, 24])
@pytest.mark.parametrize("depth", [4, 6])
def test_block_kernel_with_all_sides_physical_is_the_serial_wavefront(n, depth):
    ac = ac_system(n)
    x = random_state(n, n)
    v = x.reshape(n, n)
    xpad = stencils.pad_with_neumann_halo(v)
    out = np.empty_like(xpad)
    rings = [np.empty((stencils.RING, n + 2)) for _ in range(3)]
    stencils.ac_rk4_step_wavefront(xpad, out, *rings, DT, ac.inv_h2, ac.inv_eps2)
    got = decomposed_step(ac, v, [0, n], [0, n], depth)
    assert np.array_equal(got, out[1:-1, 1:-1])
    assert np.array_equal(got.ravel(), reference_rk4(ac, x, 1))


@pytest.mark.parametrize("cuts0, cuts1", [
    ([0, 12, 24], [0, 24]),                 # [2, 1] slabs
    ([0, 24], [0, 12, 24]),                 # [1, 2]
    ([0, 12, 24], [0, 12, 24]),             # [2, 2]: corners come from the diagonal block
    ([0, 4, 8, 20, 24], [0, 5, 19, 24]),    # uneven, 4-cell blocks (the thinnest allowed)
])
def test_block_kernel_on_sub_blocks_is_bit_identical(cuts0, cuts1):
    n = 24
    ac = ac_system(n)
    x = random_state(n, 1)
    want = reference_rk4(ac, x, 3)
    v = x.reshape(n, n)
    for _ in range(3):
        v = decomposed_step(ac, v, cuts0, cuts1)
    assert np.array_equal(v.ravel(), want)
    assert np.array_equal(v.ravel(), ac.integrate(x, DT, 3))


def test_block_kernel_needs_a_four_deep_halo():
    ac = ac_system(8)
    xpad = np.zeros((14, 14))
    rings = [np.zeros((stencils.RING, 14)) for _ in range(3)]
    with pytest.raises(ValueError, match="RK4_HALO"):
        stencils.ac_rk4_step_block(xpad, np.zeros_like(xpad), *rings, 3, True, True, True, True,
                                   DT, ac.inv_h2, ac.inv_eps2)


@pytest.mark.parametrize("is_2d, method, shape, grid, want", [
    (True, "rk4", (1024, 1024), (2, 1), 4),
    (True, "rk4", (8, 8), (2, 2), 4),       # 4-cell blocks: deep halo still fits
    (True, "rk4", (9, 9), (1, 3), 1),       # 3-cell blocks: fall back to one exchange per stage
    (True, "euler", (64, 64), (2, 1), 1),
    (False, "rk4", (50,), (2,), 1),
])
def test_halo_depth(is_2d, method, shape, grid, want):
    assert halo_depth(is_2d, method, shape, grid) == want


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

# 2. FieldDomain == serial runs, bit for bit (state and labels), deep-halo path and fallback.
dt = 2e-5
for n, dims in {1: [(13, [1, 1])], 2: [(13, [2, 1]), (13, [1, 2]), (7, [2, 1])],
                4: [(13, [2, 2]), (13, [4, 1]), (9, [1, 4])]}[size]:
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=0.1))
    x = np.random.default_rng(n).uniform(-1.1, 1.1, n * n)
    idx = np.array([n * n - 1, 0, n + 5, n * (n // 2) + n // 2, n - 1])
    for method, step in (("rk4", rk4_step), ("euler", euler_step)):
        want = x
        for _ in range(5):
            want = step(ac.rhs, want, dt)
        dom = FieldDomain(ac, dt, comm, dims, method)
        dom.load(x)
        dom.advance(2)
        dom.advance(3)
        got = dom.gather(0)
        labels = dom.labels(idx, 0)
        expect_depth = 4 if method == "rk4" and all(n // p >= 4 for p in dims) else 1
        check(f"allen_cahn n={n} {dims} {method}: halo depth", dom.depth == expect_depth)
        if rank == 0:
            check(f"allen_cahn n={n} {dims} {method}: state", np.array_equal(got, want))
            check(f"allen_cahn n={n} {dims} {method}: labels",
                  np.array_equal(labels, ac.partial_rhs(want, idx)))
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


def test_halo_depth_rejects_bad_depth():
    from hpcsur.parallel.grid import GridHalo

    with pytest.raises(InputError, match="halo depth"):
        GridHalo(grid=None, ndim=2, depth=0)
