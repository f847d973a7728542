"""The system registry: every built-in kind's declarations agree with its system, in numpy and torch."""
import dataclasses

import numpy as np
import pytest
import torch

from hpcsur.config import to_table
from hpcsur.errors import InputError
from hpcsur.systems import registry

SMALL = {"lennard_jones": {"n_atoms": 256, "lattice": "fcc"}, "allen_cahn": {"n": 24}, "predator_prey": {"n": 20}}


def _small(kind):
    return dataclasses.replace(kind.params(), **SMALL[kind.name])


@pytest.mark.parametrize("name", sorted(registry.BUILTIN))
def test_declared_layout_and_observables_match_the_system(name):
    kind = registry.get(name)
    table = _small(kind)
    system = kind.build(table)
    assert kind.state_layout(table) == (system.layout.block_size, system.layout.n_blocks)
    assert kind.observable_names == system.observable_names
    rng = np.random.default_rng(5)
    values = {p: float(np.mean(spec.default)) for p, spec in kind.initial.items()}
    x = kind.initial_state(system, table, values, rng)
    x = x + 1e-3 * rng.standard_normal(x.shape)  # off the symmetric initial family
    layout = {"block_size": system.layout.block_size, "n_blocks": system.layout.n_blocks}
    phi = kind.observables(to_table(table), layout)
    expected = system.observable(x)
    np.testing.assert_allclose(phi(x), expected, rtol=1e-12)
    batch = torch.from_numpy(np.stack([x, 2 * x])).requires_grad_(True)
    out = phi(batch)
    assert out.shape == (2, kind.n_observables)
    np.testing.assert_allclose(out[0].detach().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(out[1].detach().numpy(), system.observable(2 * x), rtol=1e-12)
    out.sum().backward()  # differentiable: the encoder's Jacobian rows come from it
    assert torch.isfinite(batch.grad).all()


@pytest.mark.parametrize("name", sorted(registry.BUILTIN))
def test_grid_shape_and_weak_scale_agree(name):
    kind = registry.get(name)
    table = _small(kind)
    grown = dataclasses.replace(table, **kind.weak_scale(table, 2))
    assert len(kind.domain_shape(table)) == kind.spatial_dims
    m, n = kind.state_layout(table)
    assert kind.state_layout(grown)[1] == 2 ** kind.spatial_dims * n


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(InputError, match="'no_such_system' is not known; choose one of: lennard_jones, allen_cahn"):
        registry.get("no_such_system")


def test_a_kind_is_checked_when_declared_and_registered_once():
    base = registry.get("predator_prey")
    with pytest.raises(InputError, match="decomposition"):
        dataclasses.replace(base, name="bad_one", decomposition="mesh")
    with pytest.raises(InputError, match="needs grid_shape"):
        dataclasses.replace(base, name="bad_two", grid_shape=None)
    with pytest.raises(InputError, match="registered twice"):
        registry.register(dataclasses.replace(base))
    extra = registry.register(dataclasses.replace(base, name="predator_prey_copy"))
    try:
        assert registry.get("predator_prey_copy") is extra and "predator_prey_copy" in registry.names()
    finally:
        registry._KINDS.pop("predator_prey_copy")
