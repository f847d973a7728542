"""The encode stage: per-frame quantities against explicit pseudo-inverses; rank invariance."""
import subprocess

import numpy as np
import pytest
import torch

from conftest import HPCSUR, MPIEXEC, write_job
from hpcsur import store as zstore
from hpcsur.learn.autoencoder import AutoencoderShape, ClosureAutoencoder
from hpcsur.learn.encode import encode_block, jacobian_of
from hpcsur.systems.predator_prey import spatial_means
from hpcsur.systems.base import Layout


def test_encode_block_matches_explicit_pseudo_inverses():
    torch.manual_seed(0)
    n_cells, k, draws = 6, 2, 2
    layout = Layout(2, n_cells, ("u", "v"))                 # PP layout: u then v, a block = (u_i, v_i)
    ae = ClosureAutoencoder(AutoencoderShape(12, 2, 4, (8,), "tanh"), spatial_means({"n": n_cells}, {})).double()
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.8, size=(5, 12))
    f_full = rng.standard_normal((5, 12))
    idx = np.sort(np.stack([[rng.choice(n_cells, k, replace=False) for _ in range(draws)] for _ in range(5)]), axis=2)
    f_partial = np.stack([[f_full[i][layout.coordinates(idx[i, a])] for a in range(draws)] for i in range(5)])
    out = encode_block(ae, layout, x, idx, f_partial, f_full)
    assert out["lxp_R"].shape == (5, draws, 4, 4) and out["jf_est"].shape == (5, draws, 4)
    xt = torch.from_numpy(x)
    j = ae.jacobian(xt).detach()
    pinv = torch.linalg.pinv(j).numpy()
    g = rng.standard_normal((5, 4))
    assert np.allclose(out["z"], ae.encode(xt).detach().numpy(), atol=1e-14)
    assert np.allclose(out["jf"], np.einsum("fdn,fn->fd", j.numpy(), f_full), atol=1e-12)
    for i in range(5):
        lx = np.sum((f_full[i] - pinv[i] @ g[i]) ** 2)
        res = out["lx_y"][i] - out["lx_R"][i] @ g[i]
        assert np.isclose(res @ res + out["lx_r2"][i], lx, rtol=1e-9)
        for a in range(draws):  # every draw against its own index set
            cols = layout.coordinates(idx[i, a]).reshape(-1)
            lxp = np.sum((f_full[i][cols] - pinv[i][cols] @ g[i]) ** 2)
            res = out["lxp_y"][i, a] - out["lxp_R"][i, a] @ g[i]
            assert np.isclose(res @ res + out["lxp_r2"][i, a], lxp, rtol=1e-9)
            j_i = j.numpy()[i][:, cols]
            assert np.allclose(out["jf_est"][i, a], (n_cells / k) * j_i @ f_full[i][cols], atol=1e-12)
    assert not np.allclose(out["lxp_y"][:, 0], out["lxp_y"][:, 1])


@pytest.mark.parametrize("activation,right_inverse", [("tanh", "pinv"), ("softplus", "pinv"), ("tanh", "decoder")])
def test_factored_jacobian_gives_the_arrays_of_the_dense_one(activation, right_inverse):
    """encode_block with J never formed (J J^T = A (W W^T) A^T + observable rows, J's columns at I, J f, the
    leverage from C^-1 [grad phi*; A W]) equals encode_block on the dense J, array by array, every draw, with full
    labels, for two encoder depths."""
    torch.manual_seed(3)
    n_cells, k, draws = 7, 3, 2
    layout = Layout(2, n_cells, ("u", "v"))
    rng = np.random.default_rng(4)
    x = rng.uniform(0.2, 0.8, size=(6, 14))
    f_full = rng.standard_normal((6, 14))
    idx = np.sort(np.stack([[rng.choice(n_cells, k, replace=False) for _ in range(draws)] for _ in range(6)]), axis=2)
    f_partial = np.stack([[f_full[i][layout.coordinates(idx[i, a])] for a in range(draws)] for i in range(6)])
    for hidden in ((8,), (8, 6)):
        ae = ClosureAutoencoder(AutoencoderShape(14, 2, 5, hidden, activation),
                                spatial_means({"n": n_cells}, {})).double()
        ae.set_normalisation(x.mean(0), x.std(0) + 0.1, np.zeros(2), np.ones(2))
        assert ae.closure_factors(torch.from_numpy(x)) is not None
        dense = encode_block(ae, layout, x, idx, f_partial, f_full, right_inverse, factored=False)
        fact = encode_block(ae, layout, x, idx, f_partial, f_full, right_inverse, factored=True)
        assert set(dense) == set(fact)
        for name in dense:
            np.testing.assert_allclose(fact[name], dense[name], rtol=1e-9, atol=1e-11, err_msg=f"{hidden} {name}")
        xt = torch.from_numpy(x)
        with torch.no_grad():
            f_jac, d_jac = jacobian_of(ae, xt, {}), jacobian_of(ae, xt, {}, factored=False)
            chol = torch.linalg.cholesky(d_jac.gram())
            np.testing.assert_allclose(f_jac.leverage(chol, block=3), d_jac.leverage(chol), rtol=1e-10, atol=1e-13)


def test_an_observable_scale_multiplies_z_star_and_leaves_the_microscopic_losses_alone():
    """[autoencoder] observable_scale s: z* = s phi*(x) and J's observable rows are s times the unscaled ones; the
    closure part is untouched; L_x,p of the scaled latent velocity S g equals L_x,p of g without the scale (P S^-1
    S g = P g: the microscopic residual does not see s), while L_z weighs the observable rows by s^2."""
    torch.manual_seed(0)
    n_cells, k, draws, s = 6, 2, 2, (20.0, 0.5)
    layout = Layout(2, n_cells, ("u", "v"))
    plain = ClosureAutoencoder(AutoencoderShape(12, 2, 4, (8,), "tanh"), spatial_means({"n": n_cells}, {})).double()
    scaled = ClosureAutoencoder(AutoencoderShape(12, 2, 4, (8,), "tanh", observable_scale=s),
                                spatial_means({"n": n_cells}, {})).double()
    scaled.load_state_dict(plain.state_dict())
    rng = np.random.default_rng(2)
    x = rng.uniform(0.2, 0.8, size=(4, 12))
    f_full = rng.standard_normal((4, 12))
    idx = np.sort(np.stack([[rng.choice(n_cells, k, replace=False) for _ in range(draws)] for _ in range(4)]), axis=2)
    f_partial = np.stack([[f_full[i][layout.coordinates(idx[i, a])] for a in range(draws)] for i in range(4)])
    a, b = encode_block(plain, layout, x, idx, f_partial, f_full), encode_block(scaled, layout, x, idx, f_partial, f_full)
    S = np.array([*s, 1.0, 1.0])
    np.testing.assert_allclose(b["z"], a["z"] * S, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(b["jf"], a["jf"] * S, rtol=1e-12, atol=1e-13)
    g = rng.standard_normal((4, 4))
    for i in range(4):
        for d in range(draws):
            res_a = a["lxp_y"][i, d] - a["lxp_R"][i, d] @ g[i]
            res_b = b["lxp_y"][i, d] - b["lxp_R"][i, d] @ (S * g[i])
            assert np.isclose(res_b @ res_b + b["lxp_r2"][i, d], res_a @ res_a + a["lxp_r2"][i, d], rtol=1e-9)
    lz_a, lz_b = ((a["jf"] - g) ** 2).sum(-1), ((b["jf"] - S * g) ** 2).sum(-1)
    np.testing.assert_allclose(lz_b, (((a["jf"] - g) * S) ** 2).sum(-1), rtol=1e-12)
    assert not np.allclose(lz_a, lz_b)


def test_centred_inputs_train_with_one_mean_per_field_and_raw_observables(pp_store, tmp_path):
    """normalise = "centre": the trained autoencoder's input shift is the training frames' mean of each field (u, v),
    nothing is scaled, and z* = 20 phi* enters the decoder raw (obs_mean 0, obs_std 1, not 20)."""
    from hpcsur.learn.data import frame_moments, split_of
    from hpcsur.learn.stages import load_autoencoder
    from hpcsur.ops.jobspec import load_job

    folder, store = pp_store
    job = write_job(tmp_path, "centre", store, tmp_path / "run")
    job.write_text(job.read_text().replace("epochs = 6\n", "epochs = 1\nnormalise = \"centre\"\n"
                                           "observable_scale = [20.0, 20.0]\n", 1))
    res = subprocess.run([HPCSUR, "train-ae", str(job), "--backend", "none", "--no-progress"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    spec = load_job(str(job))
    ae = load_autoencoder(str(store), tmp_path / "run", spec.autoencoder)
    dataset = zstore.open_dataset(store)
    mean, _, _ = frame_moments(str(store), "x", split_of(dataset, 1, 2).frames("train"))
    per_field = np.asarray(mean).reshape(2, -1).mean(-1)
    np.testing.assert_allclose(ae.x_mean.numpy(), np.repeat(per_field, 20), rtol=1e-6)   # float32 buffers
    assert per_field[0] != pytest.approx(per_field[1])
    assert torch.all(ae.x_std == 1.0) and torch.all(ae.obs_mean == 0.0) and torch.all(ae.obs_std == 1.0)


@pytest.mark.mpi
def test_encoding_is_identical_on_one_and_two_ranks(pp_store, tmp_path):
    folder, store = pp_store
    job = write_job(tmp_path, "enc", store, tmp_path / "run")
    subprocess.run([HPCSUR, "train-ae", str(job), "--backend", "none", "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    one = subprocess.run([HPCSUR, "encode", str(job), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    encoded = tmp_path / "run" / "encoded"
    ref = zstore.open_dataset(encoded)
    ref_arrays = ref.global_frames(0, ref.n_frames)
    # a second encoding without --resume is refused in one line; with --resume it is a no-op
    again = subprocess.run([HPCSUR, "encode", str(job)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    (tmp_path / "run2").mkdir()
    job2 = write_job(tmp_path / "run2", "enc", store, tmp_path / "run2" / "run")
    (tmp_path / "run2" / "run").mkdir()
    import shutil
    shutil.copytree(tmp_path / "run" / "autoencoder", tmp_path / "run2" / "run" / "autoencoder")
    two = subprocess.run([MPIEXEC, "-n", "2", HPCSUR, "encode", str(job2), "--no-progress"], capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    other = zstore.open_dataset(tmp_path / "run2" / "run" / "encoded")
    arrays = other.global_frames(0, other.n_frames)
    assert set(arrays) == set(ref_arrays) >= {"z", "lxp_R", "lxp_y", "lxp_r2", "jf", "lx_R", "jf_est"}
    for name in arrays:
        assert np.array_equal(arrays[name], ref_arrays[name]), name
    assert zstore.verify(tmp_path / "run2" / "run" / "encoded").ok


def test_the_decoder_right_inverse_gives_the_triples_of_the_decoders_jacobian():
    """With right_inverse = "decoder" the L_x / L_x,p triples represent |f - psi'(z) g|^2 and
    (per draw) |f_I - psi'(z)_I g|^2, psi' checked by central differences of the decoder; L_z's J f
    is unchanged."""
    torch.manual_seed(2)
    n_cells, k, draws = 6, 2, 2
    layout = Layout(2, n_cells, ("u", "v"))
    ae = ClosureAutoencoder(AutoencoderShape(12, 2, 4, (8,), "tanh"), spatial_means({"n": n_cells}, {})).double()
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.8, size=(5, 12))
    f_full = rng.standard_normal((5, 12))
    idx = np.sort(np.stack([[rng.choice(n_cells, k, replace=False) for _ in range(draws)] for _ in range(5)]), axis=2)
    f_partial = np.stack([[f_full[i][layout.coordinates(idx[i, a])] for a in range(draws)] for i in range(5)])
    out = encode_block(ae, layout, x, idx, f_partial, f_full, right_inverse="decoder")
    ref = encode_block(ae, layout, x, idx, f_partial, f_full)
    assert np.allclose(out["jf"], ref["jf"], atol=1e-14) and np.allclose(out["z"], ref["z"], atol=1e-14)
    z = torch.from_numpy(out["z"])
    h = 1e-6
    tangent = np.stack([((ae.decode(z + h * e) - ae.decode(z - h * e)) / (2 * h)).detach().numpy()
                        for e in torch.eye(4, dtype=torch.float64)], axis=-1)          # (5, 12, 4)
    g = rng.standard_normal((5, 4))
    for i in range(5):
        res = out["lx_y"][i] - out["lx_R"][i] @ g[i]
        assert np.isclose(res @ res + out["lx_r2"][i], np.sum((f_full[i] - tangent[i] @ g[i]) ** 2), rtol=1e-7)
        for a in range(draws):
            cols = layout.coordinates(idx[i, a]).reshape(-1)
            res = out["lxp_y"][i, a] - out["lxp_R"][i, a] @ g[i]
            want = np.sum((f_full[i][cols] - tangent[i][cols] @ g[i]) ** 2)
            assert np.isclose(res @ res + out["lxp_r2"][i, a], want, rtol=1e-7)


def test_a_frame_without_observable_gradient_is_named_not_a_traceback():
    """Allen-Cahn at v = -1 everywhere (a vanished torus): the free energy's gradient is exactly zero, so J J^T is
    singular; encode_block names that frame's row (RankDeficientJacobian), healthy frames pass."""
    from hpcsur.learn.losses import KAPPA_LIMIT, RankDeficientJacobian, check_rank
    from hpcsur.systems.allen_cahn import AllenCahn, AllenCahnParams, free_energy_observable

    torch.manual_seed(0)
    n = 8
    ac = AllenCahn(AllenCahnParams(n=n, epsilon=0.05))
    layout = Layout(1, n * n)
    ae = ClosureAutoencoder(AutoencoderShape(n * n, 1, 3, (8,), "tanh"),
                            free_energy_observable({"n": n, "epsilon": 0.05}, {})).double()
    x = np.stack([ac.torus(0.35, 0.12), ac.torus(0.3, 0.1), -np.ones(n * n), ac.torus(0.4, 0.15)])
    idx = np.tile(np.arange(4), (4, 1, 1))
    f_partial = np.stack([ac.partial_rhs(xi, np.arange(4)) for xi in x])[:, None]
    with pytest.raises(RankDeficientJacobian) as err:
        encode_block(ae, layout, x, idx, f_partial)
    assert err.value.row == 2 and err.value.count == 1 and err.value.kappa > KAPPA_LIMIT
    message = str(err.value.at("trajectory 7, step 300", "encode"))
    assert message.startswith("encode: the encoder Jacobian is numerically rank-deficient at trajectory 7, step 300")
    healthy = encode_block(ae, layout, x[[0, 1, 3]], idx[:3], f_partial[:3])
    assert np.all(np.isfinite(healthy["kappa"])) and np.all(healthy["kappa"] < KAPPA_LIMIT)
    gram = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    gram[1, 0, 0] = float("nan")
    with pytest.raises(RankDeficientJacobian, match="nan"):
        check_rank(gram)
