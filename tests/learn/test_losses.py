"""The losses against independent references: explicit pseudo-inverses, SVDs, Monte-Carlo averages."""
import numpy as np
import pytest
import torch

from hpcsur.learn.losses import (RankDeficientJacobian, batch_loss, check_rank, full_triple, gram_cholesky, loss_lz,
                                 partial_pinv_rows, residual_loss, residual_triple)



@pytest.fixture(autouse=True)
def float64_default():
    """These tests compare against float64 references; restore the default for other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_problem(seed, d=4, n=30, frames=3):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(frames, d, n, generator=g)
    f = torch.randn(frames, n, generator=g)
    z = torch.randn(frames, d, generator=g)
    return j, f, z


@pytest.mark.parametrize("k", [1, 3, 4, 10, 30])
def test_partial_pinv_rows_equal_rows_of_pinv(k):
    j, _, _ = random_problem(0)
    rng = np.random.default_rng(k)
    cols = torch.from_numpy(np.stack([np.sort(rng.choice(30, k, replace=False)) for _ in range(3)]))
    rows = partial_pinv_rows(j, cols)
    pinv = torch.linalg.pinv(j)
    expected = torch.stack([pinv[i, cols[i]] for i in range(3)])
    assert rows.shape == (3, k, 4)
    assert torch.allclose(rows, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [2, 4, 9])
def test_residual_triple_reproduces_the_partial_loss_for_any_g(k):
    """||f_I - (J+)_I g||^2 == ||y - R g||^2 + r2, also when |I| < d (zero-padded R)."""
    j, f, _ = random_problem(1)
    cols = torch.tensor([[0, 5, 7, 8, 11, 12, 20, 21, 29][:k]] * 3)
    p = partial_pinv_rows(j, cols)
    f_i = torch.gather(f, 1, cols)
    r, y, r2 = residual_triple(p, f_i)
    assert r.shape == (3, 4, 4) and y.shape == (3, 4)
    for seed in range(5):
        g = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)) * 3
        explicit = ((f_i - (p @ g.unsqueeze(-1)).squeeze(-1)) ** 2).sum(-1)
        assert torch.allclose(residual_loss(g, r, y, r2), explicit, rtol=1e-10, atol=1e-12)


def test_full_triple_reproduces_lx_and_jf():
    j, f, _ = random_problem(2)
    r, y, r2, jf = full_triple(j, f)
    assert torch.allclose(jf, (j @ f.unsqueeze(-1)).squeeze(-1), atol=1e-12)
    pinv = torch.linalg.pinv(j)
    for seed in range(5):
        g = torch.randn(3, 4, generator=torch.Generator().manual_seed(10 + seed))
        explicit = ((f - (pinv @ g.unsqueeze(-1)).squeeze(-1)) ** 2).sum(-1)
        assert torch.allclose(residual_loss(g, r, y, r2), explicit, rtol=1e-10, atol=1e-10)


def test_lxp_expectation_over_index_sets_is_lx():
    """E_I[(1/p) ||f_I - (J+)_I g||^2] = ||f - J+ g||^2 (paper Eq. 13), I uniform without
    replacement over blocks of m coordinates: the Monte-Carlo mean converges at the 1/sqrt(M) rate."""
    d, n_blocks, m, k = 3, 20, 2, 4
    g_ = torch.Generator().manual_seed(3)
    j = torch.randn(1, d, n_blocks * m, generator=g_)
    f = torch.randn(1, n_blocks * m, generator=g_)
    g = torch.randn(1, d, generator=g_)
    r, y, r2, _ = full_triple(j, f)
    lx = float(residual_loss(g, r, y, r2))
    rng = np.random.default_rng(0)
    draws = 4000
    blocks = np.sort(np.stack([rng.choice(n_blocks, k, replace=False) for _ in range(draws)]), axis=1)
    cols = torch.from_numpy((blocks[:, :, None] * m + np.arange(m)).reshape(draws, -1))
    jj, ff, gg = j.expand(draws, -1, -1), f.expand(draws, -1), g.expand(draws, -1)
    rp, yp, r2p = residual_triple(partial_pinv_rows(jj, cols), torch.gather(ff, 1, cols))
    samples = residual_loss(gg, rp, yp, r2p, weight=n_blocks / k).numpy()
    stderr = samples.std(ddof=1) / np.sqrt(samples.size)
    assert abs(samples.mean() - lx) < 4 * stderr
    assert stderr < 0.05 * lx  # the check has teeth: the estimate is within a few percent


def test_theorem1_bounds_on_random_full_row_rank_jacobians():
    """b1 (L_x + C) <= L_z <= b2 (L_x + C), [b1, b2] the spectrum of J J^T and
    C = -sum_{i>d} (v_i . f)^2 from a full SVD (numpy, independent of our Cholesky / QR path)."""
    rng = np.random.default_rng(4)
    for trial in range(20):
        d, n = 3, 12
        jn = rng.standard_normal((d, n)) * rng.uniform(0.1, 3.0, size=(d, 1))
        fn, gn = rng.standard_normal(n), rng.standard_normal(d)
        j, f, g = (torch.from_numpy(a)[None] for a in (jn, fn, gn))
        r, y, r2, jf = full_triple(j, f)
        lx = float(residual_loss(g, r, y, r2))
        lz = float(loss_lz(g, jf))
        _, s, vt = np.linalg.svd(jn, full_matrices=True)
        c = -float(np.sum((vt[d:] @ fn) ** 2))
        b1, b2 = s.min() ** 2, s.max() ** 2
        assert b1 * (lx + c) <= lz * (1 + 1e-10) + 1e-12
        assert lz <= b2 * (lx + c) * (1 + 1e-10) + 1e-12


def test_batch_loss_dispatch_and_weights():
    j, f, z = random_problem(5)
    cols = torch.tensor([[1, 2, 3, 4, 5]] * 3)
    r, y, r2 = residual_triple(partial_pinv_rows(j, cols), torch.gather(f, 1, cols))
    rx, yx, r2x, jf = full_triple(j, f)
    batch = {"jf": jf, "lxp_R": r, "lxp_y": y, "lxp_r2": r2, "lx_R": rx, "lx_y": yx, "lx_r2": r2x}
    g = torch.randn(3, 4)
    assert torch.isclose(batch_loss("lz", g, batch, 0.2), ((jf - g) ** 2).sum(-1).mean())
    assert torch.isclose(batch_loss("lxp", g, batch, 0.25), 4 * residual_loss(g, r, y, r2).mean())
    assert torch.isclose(batch_loss("lx", g, batch, 0.25), residual_loss(g, rx, yx, r2x).mean())
    # without the constant: shifted by mean(r2) / p, same gradient
    shift = batch_loss("lxp", g, batch, 0.25) - batch_loss("lxp", g, batch, 0.25, constant=False)
    assert torch.isclose(shift, 4 * r2.mean())
    g1, g2 = g.clone().requires_grad_(True), g.clone().requires_grad_(True)
    batch_loss("lxp", g1, batch, 0.25).backward()
    batch_loss("lxp", g2, batch, 0.25, constant=False).backward()
    assert torch.allclose(g1.grad, g2.grad)
    with pytest.raises(ValueError):
        batch_loss("lq", g, batch, 0.2)


def test_gram_cholesky_is_a_factor():
    j, _, _ = random_problem(6)
    c = gram_cholesky(j)
    assert torch.allclose(c @ c.transpose(-1, -2), j @ j.transpose(-1, -2), atol=1e-10)
    assert torch.all(torch.triu(c, 1) == 0)


def test_a_non_finite_gram_is_named_as_overflow_not_as_rank_deficiency():
    """J J^T with a NaN (weights that overflowed) reports kappa NaN, and the stage's line says what to change
    (the learning rate, the input scaling) instead of blaming the data."""
    j, _, _ = random_problem(6)
    gram = j @ j.transpose(-1, -2)
    gram[2, 0, 0] = float("nan")
    with pytest.raises(RankDeficientJacobian) as caught:
        check_rank(gram)
    err = caught.value
    assert (err.row, err.count, err.total) == (2, 1, gram.shape[0]) and err.kappa != err.kappa
    line = str(err.at("trajectory 0, step 145", "train-ae"))
    assert line.startswith("train-ae: the encoder Jacobian is not finite at trajectory 0, step 145 (1 of ")
    assert "lower [autoencoder] lr" in line and "observable_floor" not in line
    singular = gram.clone()
    singular[2] = j[2] @ j[2].T
    singular[2, :, 0] = singular[2, 0, :] = 0.0                       # a zero row: rank-deficient, finite
    with pytest.raises(RankDeficientJacobian) as caught:
        check_rank(singular)
    assert "observable_floor" in str(caught.value.at("trajectory 0, step 1", "encode"))
    assert "normalise" not in str(caught.value.at("trajectory 0, step 1", "encode"))   # a trained encoder: the data
    assert "normalise = \"centre\"" in str(caught.value.at("trajectory 0, step 1", "train-ae"))
