"""Latent models (structure), the autoencoder (condition loss, Jacobian), torch observables, RK4."""
import numpy as np
import pytest
import torch

from hpcsur.errors import InputError
from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder, autoencoder_loss, condition_number
from hpcsur.learn.latent import (GFINN, MODELS, LatentDynamics, LatentShape, OnsagerNet, ReferenceOnsagerNet,
                                 input_gradient, rk4_rollout, stack_models)
from hpcsur.learn.observables import observable_from_attrs
from hpcsur.log import Progress



@pytest.fixture(autouse=True)
def float64_default():
    """These tests compare against float64 references; restore the default for other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def batch(d=5, n=64, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_onsagernet_operators_have_their_structure():
    torch.manual_seed(0)
    model = OnsagerNet(5, [16, 16])
    z = batch()
    m, w = model.operators(z)
    assert torch.allclose(m, m.transpose(-1, -2), atol=1e-14)
    assert torch.linalg.eigvalsh(m).min() > -1e-12
    assert torch.allclose(w, -w.transpose(-1, -2), atol=1e-14)


@pytest.mark.parametrize("forcing", [False, True])
def test_onsagernet_potential_cannot_increase_without_forcing(forcing):
    """dV/dt = grad V . g = -grad V^T (M + alpha I) grad V <= 0; a forcing term can break it."""
    torch.manual_seed(1)
    model = OnsagerNet(5, [16, 16], forcing=forcing)
    if forcing:
        with torch.no_grad():
            model.forcing_net[-1].bias.fill_(5.0)
    z = batch(seed=1) * 2
    _, grad_v = input_gradient(model.potential, z)
    rate = (grad_v * model(z)).sum(-1)
    if forcing:
        assert rate.max() > 0
    else:
        assert rate.max() <= 1e-12
        m, _ = model.operators(z)
        expected = -(grad_v.unsqueeze(-2) @ (m @ grad_v.unsqueeze(-1))).squeeze() - 0.1 * (grad_v ** 2).sum(-1)
        assert torch.allclose(rate, expected, atol=1e-10)


def test_reference_onsagernet_matches_a_hand_computed_value():
    """The reference's g(z) = -(M + W) grad E - 0.01 grad E, E = 0.1 |z|^2 + 1/2 |P(z) + Gamma z|^2, with
    the networks set so that P(z) = 0.5, Gamma = [1, -1], A = [[1, 2], [3, 4]]. At z = (1, 2), by hand:
    P + Gamma z = -0.5, grad E = 0.2 z - 0.5 (1, -1) = (-0.3, 0.9); L = tril A = [[1, 0], [3, 4]],
    M = L L^T = [[1, 3], [3, 25]], U = triu A, W = U - U^T = [[0, 2], [-2, 0]];
    (M + W) grad E = (4.2, 22.2), so g = -(4.2, 22.2) - 0.01 (-0.3, 0.9) = (-4.197, -22.209)."""
    model = ReferenceOnsagerNet(2, [1, 1])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.potential_net[-1].bias.fill_(0.5)
        model.gamma.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.matrix_net[-1].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    g = model(torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(g, torch.tensor([[-4.197, -22.209]]), atol=1e-12)


def test_reference_onsagernet_has_the_reference_shapes_and_initialisation():
    """Potential net d -> 32 -> 32 -> 32 (tanh), Gamma d -> 32 without bias, M/W net d -> 64 -> 64 -> d^2
    (tanh), torch's default (non-zero) biases; and grad E is the gradient of its potential."""
    torch.manual_seed(3)
    model = ReferenceOnsagerNet(4, [32, 32])
    linear = lambda net: [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert linear(model.potential_net) == [(4, 32), (32, 32), (32, 32)]
    assert linear(model.matrix_net) == [(4, 64), (64, 64), (64, 16)]
    assert model.gamma.weight.shape == (32, 4) and model.gamma.bias is None
    assert all(m.bias.abs().max() > 0 for m in model.matrix_net if isinstance(m, torch.nn.Linear))
    z = batch(d=4, n=8, seed=3)
    _, grad_e = input_gradient(model.potential, z)
    h = 1e-6
    for i in range(4):
        dz = torch.zeros(4)
        dz[i] = h
        fd = (model.potential(z + dz) - model.potential(z - dz)) / (2 * h)
        assert torch.allclose(grad_e[:, i], fd, atol=1e-7)
    m, w = model.operators(z)
    expected = -((m + w) @ grad_e.unsqueeze(-1)).squeeze(-1) - 0.01 * grad_e
    assert torch.allclose(model(z), expected, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stacked_models_equal_each_model_alone(name):
    """stack_models evaluates K models of one architecture in one pass, each with its own weights and
    normalisation: the same numbers as K separate calls, and as K separate RK4 rollouts."""
    torch.manual_seed(4)
    models = []
    for _ in range(3):
        m = LatentDynamics(LatentShape(name, 4, (8, 8), "tanh")).eval()
        m.set_normalisation(torch.rand(4), torch.rand(4) + 0.5, torch.rand(4), torch.rand(4) + 0.5)
        models.append(m)
    stacked = stack_models(models)
    z = batch(d=4, n=6, seed=4).reshape(1, 6, 4).repeat(3, 1, 1) + torch.arange(3.0).reshape(3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(stacked(z), torch.stack([m(z[i]) for i, m in enumerate(models)]), atol=1e-12)
        counter = Progress(20 * 3 * 6, unit="trajectory steps", enabled=False)
        paths = rk4_rollout(stacked, z, 0.01, 20, every=5, progress=counter)
        assert counter.done == 20 * 3 * 6          # the evaluate stage's progress: every step of every path
        for i, m in enumerate(models):
            assert torch.allclose(paths[:, i], rk4_rollout(m, z[i], 0.01, 20, every=5), atol=1e-12)


def test_gfinn_degeneracy_conditions_hold_to_round_off():
    torch.manual_seed(2)
    model = GFINN(5, [16, 16])
    z = batch(seed=2)
    _, ge = input_gradient(model.energy, z)
    _, gs = input_gradient(model.entropy, z)
    l_op, m_op = model.operators(z, ge, gs)
    scale = float((max(l_op.abs().max(), m_op.abs().max()) * (ge.abs().max() + gs.abs().max())).detach())
    assert torch.allclose(l_op, -l_op.transpose(-1, -2), atol=1e-14)
    assert torch.allclose(m_op, m_op.transpose(-1, -2), atol=1e-14)
    assert torch.linalg.eigvalsh(m_op).min() > -1e-12
    assert (l_op @ gs.unsqueeze(-1)).abs().max() < 1e-12 * scale
    assert (m_op @ ge.unsqueeze(-1)).abs().max() < 1e-12 * scale
    g = model(z)
    assert (ge * g).sum(-1).abs().max() < 1e-12 * scale        # dE/dt = 0
    assert (gs * g).sum(-1).min() > -1e-12 * scale             # dS/dt >= 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_train_through_their_input_gradients(name):
    """Every parameter gets a gradient (the create_graph path works) and eval needs no grad mode."""
    torch.manual_seed(3)
    model = LatentDynamics(LatentShape(name, 4, (8, 8), "tanh"))
    z = batch(4, 16, seed=3)
    loss = (model(z) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        out = model(z)
    assert not out.requires_grad and out.shape == (16, 4)


def test_latent_dynamics_normalisation_is_affine():
    torch.manual_seed(4)
    model = LatentDynamics(LatentShape("mlp", 3, (8,), "tanh"))
    z = batch(3, 10, seed=4)
    raw = model.net(z)
    model.set_normalisation(z_mean=np.ones(3), z_std=2 * np.ones(3), t_mean=np.arange(3.0), t_std=3 * np.ones(3))
    assert torch.allclose(model(2 * z + 1), 3 * raw + torch.arange(3.0))


def test_rk4_is_fourth_order_on_a_linear_ode():
    a = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]])
    z0 = torch.tensor([[1.0, 0.5]])
    exact = torch.linalg.matrix_exp(a * 2.0) @ z0[0]
    errors = []
    for steps in (10, 20, 40, 80):
        path = rk4_rollout(lambda z: z @ a.T, z0, 2.0 / steps, steps)
        errors.append(float((path[-1, 0] - exact).norm()))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 4.0) < 0.15), orders


def test_condition_loss_vanishes_for_an_orthogonal_linear_encoder():
    """With phi_hat(x) = W x, W with orthonormal rows (x_std = 1), kappa(J J^T) = 1 exactly."""
    n, closure = 12, 3
    model = ClosureAutoencoder(AutoencoderShape(n, 1, 1 + closure, (), "tanh"),
                               lambda x: x[..., :1] * 0.0 + x.sum(-1, keepdim=True) * 0.0)
    q, _ = torch.linalg.qr(torch.randn(n, closure, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        model.encoder_net[0].weight.copy_(q.T)
    x = batch(n, 8, seed=5)
    j = model.jacobian(x)[:, 1:]
    assert torch.allclose(condition_number(j), torch.ones(8), atol=1e-12)
    _, parts = autoencoder_loss(model, x, 1.0, cond_rows="closure")
    assert parts["cond"] < 1e-20
    with torch.no_grad():
        model.encoder_net[0].weight[0] *= 3.0  # rows of different length: kappa = 9
    _, parts = autoencoder_loss(model, x, 1.0, cond_rows="closure")
    assert abs(parts["cond"] - 64.0) < 1e-9


def test_leverage_and_coherence_against_an_explicit_projector():
    """l_c is the diagonal of the projector J^T (J J^T)^{-1} J onto J's row space (numpy pinv reference);
    the coherence penalty is 0 for uniform leverage and (N/d) - 1 for rows supported on d coordinates."""
    from hpcsur.learn.autoencoder import coherence_penalty
    from hpcsur.learn.losses import coherence, leverage_scores

    j = batch(12, 3 * 5, seed=7).reshape(5, 3, 12)
    proj = np.stack([np.linalg.pinv(a) @ a for a in j.numpy()])
    lev = leverage_scores(j)
    assert np.allclose(lev.numpy(), np.diagonal(proj, axis1=1, axis2=2), atol=1e-12)
    assert torch.allclose(lev.sum(-1), torch.full((5,), 3.0), atol=1e-12)
    assert torch.allclose(coherence(j), lev.amax(-1) * 4.0)
    uniform = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]]).unsqueeze(0)
    assert abs(float(coherence_penalty(uniform))) < 1e-12 and abs(float(coherence(uniform)) - 1.0) < 1e-12
    spiky = torch.eye(6)[:2].unsqueeze(0) * torch.tensor([[[2.0], [0.5]]])
    assert abs(float(coherence_penalty(spiky)) - (6 / 2 - 1)) < 1e-12 and abs(float(coherence(spiky)) - 3.0) < 1e-12


def test_field_scaling_uses_one_rms_sigma_per_field():
    from hpcsur.learn.stages import field_std

    x_std = np.array([1.0, 1.0, 3.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    out = field_std(x_std, 2)
    assert np.allclose(out[:4], np.sqrt(5.0)) and np.allclose(out[4:], 0.1)


def test_centred_inputs_shift_each_field_by_its_mean_and_scale_nothing():
    from hpcsur.learn.stages import normalisation_stats

    x_mean = np.array([1.0, 3.0, 5.0, 7.0, 0.2, -0.2, 0.1, -0.1])
    x_std = np.array([2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5])
    out = normalisation_stats(x_mean, x_std, np.array([0.9]), np.array([0.1]), "centre", 2)
    assert np.allclose(out["x_mean"], [4.0] * 4 + [0.0] * 4) and np.all(out["x_std"] == 1.0)
    assert np.all(out["obs_mean"] == 0.0) and np.all(out["obs_std"] == 1.0)
    field = normalisation_stats(x_mean, x_std, np.array([0.9]), np.array([0.1]), "field", 2)
    assert np.all(field["x_mean"] == x_mean) and field["obs_std"][0] == 0.1


def test_autoencoder_jacobian_matches_finite_differences():
    torch.manual_seed(6)
    model = ClosureAutoencoder(AutoencoderShape(10, 2, 4, (8,), "softplus"), observable_from_attrs(
        {"system": "predator_prey", "params": {"n": 5}, "layout": {}}))
    x = batch(10, 2, seed=6)
    j = model.jacobian(x)
    eps = 1e-6
    for i in range(10):
        e = torch.zeros(10)
        e[i] = eps
        fd = (model.encode(x + e) - model.encode(x - e)) / (2 * eps)
        assert torch.allclose(j[:, :, i], fd, atol=1e-8)
    assert torch.allclose(j[:, 0, :5], torch.full((2, 5), 0.2))   # d mean(u)/du_i = 1/n


@pytest.mark.parametrize("activation,hidden", [("softplus", (8, 6)), ("tanh", (7,)), ("gelu", (8, 6))])
def test_encoder_gram_without_j_equals_j_j_transpose(activation, hidden):
    """The chain-rule factors J_closure = A W give the Jacobian of reverse mode, and gram() gives J J^T (all rows
    and the closure rows) without forming J; the condition loss and its parameter gradients are those of the
    explicit J, with normalised inputs (gelu: no closed-form slope here, the reverse-mode path)."""
    from torch.func import jacrev, vmap

    torch.manual_seed(7)
    model = ClosureAutoencoder(AutoencoderShape(10, 2, 5, hidden, activation), observable_from_attrs(
        {"system": "predator_prey", "params": {"n": 5}, "layout": {}}))
    model.set_normalisation(torch.rand(10), torch.rand(10) + 0.5, torch.zeros(2), torch.ones(2))
    x = batch(10, 6, seed=7)
    j = torch.cat([vmap(jacrev(model.observable))(x), vmap(jacrev(model.closure))(x)], dim=-2)
    torch.testing.assert_close(model.jacobian(x), j, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(model.gram(x), j @ j.transpose(-1, -2), atol=1e-13, rtol=1e-12)
    closure = j[:, 2:]
    torch.testing.assert_close(model.gram(x, "closure"), closure @ closure.transpose(-1, -2), atol=1e-13, rtol=1e-12)
    for rows in ("all", "closure"):
        grads = []
        for fast in (True, False):
            model.zero_grad()
            if fast:
                loss, _ = autoencoder_loss(model, x, 1e-2, rows)
            else:
                jj = torch.cat([vmap(jacrev(model.observable))(x), vmap(jacrev(model.closure))(x)], dim=-2)
                jj = jj[:, 2:] if rows == "closure" else jj
                z = model.encode(x)
                loss = (((x - model.decode(z)) / model.x_std) ** 2).mean() + 1e-2 * ((condition_number(jj) - 1) ** 2).mean()
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


def test_torch_observables_match_the_systems():
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams
    from hpcsur.systems.lennard_jones import LennardJones, fcc_lattice, maxwell_boltzmann
    from hpcsur.systems.predator_prey import PredatorPrey, PredatorPreyParams

    pp = PredatorPrey(PredatorPreyParams(n=20))
    x = pp.initial_state(0.1, 0.5)
    phi = observable_from_attrs({"system": "predator_prey", "params": {"n": 20}, "layout": {}})
    assert np.allclose(phi(torch.from_numpy(x)).numpy(), pp.observable(x), rtol=1e-14)

    ac = AllenCahn(AllenCahnParams(n=24, epsilon=0.05))
    v = ac.torus(0.35, 0.12) + 0.01 * np.random.default_rng(0).standard_normal(24 * 24)
    phi = observable_from_attrs({"system": "allen_cahn", "params": {"n": 24, "epsilon": 0.05}, "layout": {}})
    assert np.allclose(phi(torch.from_numpy(v)).numpy(), ac.observable(v), rtol=1e-12)

    positions, box = fcc_lattice(4, 0.8)
    n = len(positions)
    lj = LennardJones(box, n_atoms=n)
    x = lj.join(positions, maxwell_boltzmann(n, 1.3, 1.0, np.random.default_rng(1)))
    phi = observable_from_attrs({"system": "lennard_jones", "params": {"mass": 1.0}, "layout": {"n_blocks": n}})
    assert np.allclose(phi(torch.from_numpy(x)[None]).numpy()[0], lj.observable(x), rtol=1e-13)


def _small_autoencoder(x: torch.Tensor, scaled: bool = False, **loss_weights) -> tuple[ClosureAutoencoder, dict]:
    """A 40 -> 4 Predator-Prey autoencoder trained 200 Adam steps on ``x`` with ``autoencoder_loss(**loss_weights)``
    (optionally with oblique per-coordinate input scaling); returns it and the last loss parts."""
    torch.manual_seed(1)
    ae = ClosureAutoencoder(AutoencoderShape(40, 2, 4, (16,), "softplus"), observable_from_attrs(
        {"system": "predator_prey", "params": {"n": 20}, "layout": {}}))
    if scaled:
        ae.set_normalisation(x.mean(0), x.std(0) * torch.linspace(0.2, 3.0, 40), torch.zeros(2), torch.ones(2))
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(200):
        loss, parts = autoencoder_loss(ae, x, **loss_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae, parts


def test_the_coherence_penalty_spreads_the_encoders_leverage():
    """Training with lambda_coherence > 0 drives the encoder towards uniform leverage at almost no
    cost in reconstruction; without it the leverage stays concentrated."""
    from hpcsur.learn.losses import coherence

    x = torch.rand(256, 40, generator=torch.Generator().manual_seed(0))
    out = {}
    for lam in (0.0, 1.0):
        ae, parts = _small_autoencoder(x, lambda_cond=0.0, lambda_coherence=lam)
        out[lam] = (float(coherence(ae.jacobian(x).detach()).mean()), parts["rec"])
    assert out[1.0][0] < 1.2 < 1.6 < out[0.0][0]
    assert out[1.0][1] < 1.1 * out[0.0][1]


def test_the_tangent_penalty_puts_the_decoders_tangent_space_into_the_encoders_row_space():
    """With per-coordinate scaling the encoder's fibres are oblique to the data manifold in the raw metric
    L_x uses; L_tan makes them orthogonal (the residual drops ~100x) at almost no reconstruction cost.
    The penalty itself: 0 when psi'(z) lies in row(J), against an explicit projector otherwise."""
    from hpcsur.learn.autoencoder import tangent_penalty

    x = torch.rand(256, 40, generator=torch.Generator().manual_seed(0))
    out = {}
    for lam in (0.0, 1.0):
        ae, parts = _small_autoencoder(x, scaled=True, lambda_cond=1e-6, lambda_tangent=lam)
        j = ae.jacobian(x).detach()
        out[lam] = (float(tangent_penalty(ae, ae.encode(x), j).mean().detach()), parts["rec"])
        if lam == 1.0:
            from torch.func import jacfwd, vmap

            tangent = vmap(jacfwd(ae.decode))(ae.encode(x[:4])).detach().numpy()
            proj = np.stack([np.linalg.pinv(a) @ a for a in j[:4].numpy()])
            ref = [np.sum((t - p @ t) ** 2) / np.sum(t ** 2) for t, p in zip(tangent, proj)]
            assert np.allclose(tangent_penalty(ae, ae.encode(x[:4]), j[:4]).detach().numpy(), ref, rtol=1e-6)
    assert out[1.0][0] < 0.03 * out[0.0][0] and out[0.0][0] > 0.1
    assert out[1.0][1] < 1.1 * out[0.0][1]


@pytest.mark.parametrize("activation,hidden", [("relu2", (16, 16, 16)), ("tanh", (12, 16, 16)),
                                               ("softplus", (8, 8))])
def test_shared_onsagernet_explicit_sweep_equals_autograd(activation, hidden):
    """onsagernet_shared: grad V by the explicit backward sweep equals autograd's gradient of V, g equals
    -(M + W + alpha I) grad V + F built from the explicit matrices, and the parameters' gradients of a loss
    through g (one backward) equal those of the autograd double backward -- all to round-off in float64.
    M is symmetric PSD, W antisymmetric with a zero diagonal (U = triu(A, 1)), and the matrix head starts
    at an orthogonal bias as the reference's."""
    from hpcsur.learn.latent import ALPHA, SharedOnsagerNet

    torch.manual_seed(5)
    net = SharedOnsagerNet(5, list(hidden), activation).double()
    assert net.skip == [i > 0 and ([5, *hidden][i] == [5, *hidden][i + 1]) for i in range(len(hidden))]
    z = batch(5, 9, seed=5)
    _, grad_auto = input_gradient(net.potential, z)
    torch.testing.assert_close(net.potential_gradient(z), grad_auto, atol=1e-13, rtol=1e-12)
    m_op, w_op = net.operators(z)
    assert torch.allclose(m_op, m_op.transpose(-1, -2), atol=1e-14) and torch.linalg.eigvalsh(m_op).min() > -1e-12
    assert torch.allclose(w_op, -w_op.transpose(-1, -2)) and w_op.diagonal(dim1=-2, dim2=-1).abs().max() == 0
    forcing = net.forcing_head(net._trunk(z)[0])

    def reference(zz):
        _, grad_v = input_gradient(net.potential, zz)
        m, w = net.operators(zz)
        return -((m + w) @ grad_v.unsqueeze(-1)).squeeze(-1) - ALPHA * grad_v + net.forcing_head(net._trunk(zz)[0])
    torch.testing.assert_close(net(z), reference(z), atol=1e-13, rtol=1e-12)
    assert torch.allclose(net(z), -((m_op + w_op) @ grad_auto.unsqueeze(-1)).squeeze(-1) - ALPHA * grad_auto + forcing)
    target = torch.randn(9, 5, dtype=torch.float64)
    grads = []
    for fn in (net, reference):
        net.zero_grad()
        ((fn(z) - target) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for explicit, auto in zip(*grads):
        torch.testing.assert_close(explicit, auto, atol=1e-12, rtol=1e-10)
    bias = net.matrix_head.bias.detach().reshape(5, 5)
    torch.testing.assert_close(bias @ bias.T, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_shared_onsagernet_refuses_an_activation_without_a_closed_form_slope():
    from hpcsur.learn.latent import SharedOnsagerNet

    with pytest.raises(InputError, match="activation 'gelu' is not allowed for onsagernet_shared"):
        SharedOnsagerNet(4, [8], "gelu")


def test_jacobian_diagnostics_are_the_same_chunked_and_match_numpy():
    """diagnose holds one chunk of Jacobians at a time (N = 307,200 for LJ-51200): splitting the frames into
    chunks changes nothing, and kappa, coherence and the leverage follow numpy on the explicit J."""
    from hpcsur.learn.diagnostics import jacobian_diagnostics
    from hpcsur.systems.predator_prey import spatial_means
    torch.manual_seed(3)
    ae = ClosureAutoencoder(AutoencoderShape(12, 2, 4, (8,), "tanh"), spatial_means({"n": 6}, {})).double()
    x = np.random.default_rng(4).uniform(0.2, 0.8, size=(7, 12))
    x_std = x.std(0)
    whole = jacobian_diagnostics(ae, [x], x_std)
    chunked = jacobian_diagnostics(ae, [x[:3], x[3:4], x[4:]], x_std)
    assert whole.keys() == chunked.keys() and whole["frames"] == chunked["frames"] == 7
    for key in ("kappa", "coherence", "decoder_tangent_residual"):
        for stat in ("mean", "max"):
            assert chunked[key][stat] == pytest.approx(whole[key][stat], rel=1e-12)
    assert chunked["corr_log_leverage_log_inv_sigma"] == pytest.approx(whole["corr_log_leverage_log_inv_sigma"])
    j = ae.jacobian(torch.from_numpy(x)).detach().numpy()                       # (7, 4, 12)
    lam = np.linalg.eigvalsh(j @ j.transpose(0, 2, 1))
    assert whole["kappa"]["max"] == pytest.approx((lam[:, -1] / lam[:, 0]).max(), rel=1e-8)
    lev = np.stack([np.diag(jf.T @ np.linalg.inv(jf @ jf.T) @ jf) for jf in j])   # projector diagonal
    assert whole["coherence"]["mean"] == pytest.approx((lev.max(1) * 12 / 4).mean(), rel=1e-10)
    assert whole["leverage_max_over_mean"] == pytest.approx(lev.mean(0).max() / (4 / 12), rel=1e-10)
