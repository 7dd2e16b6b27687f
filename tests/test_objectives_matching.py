"""Matching and losses against float64 NumPy written here from docs/method.md section 3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from s2dc_jax import objectives

# ---------------------------------------------------------------- float64 references


def np_sinkhorn_log(scores, alpha, iters, temperature=1.0):
    """One problem [m, n], SuperGlue log-domain Sinkhorn with dustbins, times m+n."""
    m, n = scores.shape
    z = np.full((m + 1, n + 1), alpha, np.float64)
    z[:m, :n] = scores
    z = z / temperature
    norm = -np.log(m + n)
    log_mu = np.array([norm] * m + [np.log(n) + norm])
    log_nu = np.array([norm] * n + [np.log(m) + norm])
    u, v = np.zeros(m + 1), np.zeros(n + 1)
    for _ in range(iters):
        u = log_mu - logsumexp(z + v[None, :], axis=1)
        v = log_nu - logsumexp(z + u[:, None], axis=0)
    return z + u[:, None] + v[None, :] - norm


def np_match_loss(p, gt):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    pos = -np.log(p[gt == 1]).mean() if (gt == 1).any() else 0.0
    neg = -np.log(1 - p[gt == 0]).mean() if (gt == 0).any() else 0.0
    return pos + neg, pos, neg


def np_sharpe_loss(s, gt):
    a = (1 + s) / 2
    w_col = softmax((a.max(0) - a.mean(0)) / a.std(0, ddof=1))
    w_row = softmax((a.max(1) - a.mean(1)) / a.std(1, ddof=1))
    a = np.clip(a, 1e-6, 1 - 1e-6)
    nll = -np.log(a)
    pos = gt == 1
    l1 = (nll * w_col[None, :])[pos].sum()
    l2 = (nll * w_row[:, None])[pos].sum()
    return (l1 + l2) / 2 + (-np.log(1 - a[gt == 0])).mean()


def np_info_nce(q, kpos, neg, tau):
    logits = np.concatenate([(q * kpos).sum(-1, keepdims=True), q @ neg.T], 1) / tau
    return logsumexp(logits, axis=1) - logits[:, 0]


# ---------------------------------------------------------------- inputs


def _cosines(rng, shape, d=16):
    x = rng.normal(size=shape[:-1] + (d,))
    y = rng.normal(size=shape[:-2] + (shape[-1], d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y /= np.linalg.norm(y, axis=-1, keepdims=True)
    return np.einsum("...md,...nd->...mn", x, y)


def _gt(rng, shape, p=0.08):
    gt = (rng.uniform(size=shape) < p).astype(np.float64)
    gt[0, 0] = 0  # first problem has no positive: the positive term must drop to 0
    return gt


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_sinkhorn_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    s = _cosines(rng, (2, 3, 9, 11))
    got = np.asarray(objectives.sinkhorn_log(jnp.asarray(s, jnp.float32), 1.0, 30, temperature))
    assert got.shape == (2, 3, 10, 12)
    for idx in np.ndindex(2, 3):
        want = np_sinkhorn_log(s[idx], 1.0, 30, temperature)
        np.testing.assert_allclose(np.exp(got[idx]), np.exp(want), atol=1e-5)
        np.testing.assert_allclose(got[idx], want, atol=1e-4, rtol=1e-5)


def test_sinkhorn_meets_marginals():
    rng = np.random.default_rng(1)
    m, n = 12, 16
    s = _cosines(rng, (4, m, n))
    plan = np.exp(np.asarray(objectives.sinkhorn_log(jnp.asarray(s, jnp.float32), 0.5, 200), np.float64))
    plan /= m + n  # undo the reference's multiply-back to get the transport plan itself
    rows, cols = plan.sum(-1), plan.sum(-2)
    np.testing.assert_allclose(rows[:, :m], 1 / (m + n), atol=1e-6)
    np.testing.assert_allclose(rows[:, m], n / (m + n), atol=1e-6)
    np.testing.assert_allclose(cols[:, :n], 1 / (m + n), atol=1e-6)
    np.testing.assert_allclose(cols[:, n], m / (m + n), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_dual_softmax_matches_numpy(temperature):
    rng = np.random.default_rng(2)
    s = _cosines(rng, (3, 7, 9))
    want = softmax(s / temperature, axis=-1) * softmax(s / temperature, axis=-2)
    got = objectives.dual_softmax(jnp.asarray(s, jnp.float32), temperature)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_match_loss_matches_numpy():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(2, 3, 8, 8)) ** 3
    p[1, 1, 0, 0] = 0.0  # exercises the clamp
    gt = _gt(rng, (2, 3, 8, 8))
    got = [np.asarray(x) for x in objectives.match_loss(jnp.asarray(p, jnp.float32), jnp.asarray(gt))]
    for idx in np.ndindex(2, 3):
        want = np_match_loss(p[idx], gt[idx])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[idx], w, atol=1e-5, rtol=1e-5)
    assert got[1][0, 0] == 0.0


def test_sharpe_loss_matches_numpy():
    rng = np.random.default_rng(4)
    s = _cosines(rng, (2, 3, 10, 10))
    gt = _gt(rng, (2, 3, 10, 10), p=0.1)
    got = np.asarray(objectives.sharpe_loss(jnp.asarray(s, jnp.float32), jnp.asarray(gt)))
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(got[idx], np_sharpe_loss(s[idx], gt[idx]), atol=1e-5, rtol=1e-5)


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(5)
    q, kp, neg = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=(30, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    loss, hit = objectives.info_nce(*(jnp.asarray(x, jnp.float32) for x in (q, kp, neg)), 0.9)
    np.testing.assert_allclose(np.asarray(loss), np_info_nce(q, kp, neg, 0.9), atol=1e-5, rtol=1e-5)
    logits = np.concatenate([(q * kp).sum(-1, keepdims=True), q @ neg.T], 1)
    np.testing.assert_array_equal(np.asarray(hit), (logits.argmax(1) == 0).astype(np.float32))


@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("kind", ["random", "collapsed", "blank"])
def test_losses_and_gradients_finite(kind, temperature):
    """Collapsed features (all tokens equal) and constant similarities must not give NaN/inf."""
    rng = np.random.default_rng(6)
    m, d = 16, 8
    if kind == "random":
        q = rng.normal(size=(2, m, d))
        k = rng.normal(size=(2, m, d))
    elif kind == "collapsed":
        q = np.tile(rng.normal(size=(1, 1, d)), (2, m, 1))
        k = q.copy()
    else:  # blank ROI after BN: exactly zero features before the L2 normalisation
        q = np.zeros((2, m, d))
        k = np.zeros((2, m, d))
    gt = np.eye(m)[None].repeat(2, 0)

    def total(q, k):
        q, k = objectives.l2_normalize(q), objectives.l2_normalize(k)
        s = jnp.einsum("bmd,bnd->bmn", q, k)
        plan = jnp.exp(objectives.sinkhorn_log(s, 1.0, 50, temperature)[..., :-1, :-1])
        a = objectives.match_loss(plan, gt)[0] + objectives.match_loss(objectives.dual_softmax(s, temperature), gt)[0]
        b = objectives.sharpe_loss(s, gt) + objectives.sharpe_loss(s, gt, detach_weights=False)
        return jnp.sum(a + b)

    val, grads = jax.value_and_grad(total, argnums=(0, 1))(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32))
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_sharpe_weights_guarded_for_constant_columns():
    w_col, w_row = objectives.sharpe_weights(jnp.full((5, 6), 0.7))
    np.testing.assert_allclose(np.asarray(w_col), np.full(6, 1 / 6), atol=1e-7)
    np.testing.assert_allclose(np.asarray(w_row), np.full(5, 1 / 5), atol=1e-7)


def test_sinkhorn_rejects_zero_iterations():
    with pytest.raises(ValueError, match="iters"):
        objectives.sinkhorn_log(jnp.zeros((3, 3)), 1.0, 0)
