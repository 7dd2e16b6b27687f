"""Patch matching and the three S2DC loss terms, batched over leading axes (docs/method.md section 3).

Every function here works on ``[..., m, n]`` score matrices (one matching problem per
leading index) and returns per-problem values; callers average. No Python loops over
problems, so one call covers every z-slice of every volume.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Clamp of assignment probabilities and similarities before the logs (as the reference).
PROB_EPS = 1e-6
# Floor of the Sharpe-ratio std: a blank region or collapsed features give std = 0,
# which is NaN in the reference (docs/method.md section 6).
SHARPE_STD_EPS = 1e-6


def sinkhorn_log(scores: jax.Array, bin_score: float | jax.Array, iters: int,
                 temperature: float = 1.0) -> jax.Array:
    """Log transport plan with a dustbin row and column, ``[..., m+1, n+1]``, times ``m+n``.

    SuperGlue-style log-domain Sinkhorn (docs/method.md section 3.1): the score matrix is
    padded with ``bin_score``, row marginals are ``1/(m+n)`` (the bin row ``n/(m+n)``),
    column marginals ``1/(m+n)`` (the bin column ``m/(m+n)``), ``iters`` alternating row
    and column updates from zero potentials, and the plan is multiplied back by ``m+n``.
    ``temperature`` divides the whole coupling matrix (scores and bin score alike), so the
    bin keeps its meaning on the cosine scale; 1.0 is the reference.
    """
    if iters < 1:
        raise ValueError(f"sinkhorn iters must be >= 1, got {iters}")
    *lead, m, n = scores.shape
    dtype = scores.dtype
    alpha = jnp.asarray(bin_score, dtype)
    couplings = jnp.concatenate([
        jnp.concatenate([scores, jnp.broadcast_to(alpha, (*lead, m, 1))], -1),
        jnp.broadcast_to(alpha, (*lead, 1, n + 1)),
    ], -2) / temperature                                        # [..., m+1, n+1]
    norm = -jnp.log(jnp.asarray(m + n, dtype))
    log_mu = jnp.concatenate([jnp.full((m,), norm, dtype), jnp.log(jnp.asarray([n], dtype)) + norm])
    log_nu = jnp.concatenate([jnp.full((n,), norm, dtype), jnp.log(jnp.asarray([m], dtype)) + norm])

    def body(carry, _):
        u, v = carry
        u = log_mu - jax.nn.logsumexp(couplings + v[..., None, :], axis=-1)
        v = log_nu - jax.nn.logsumexp(couplings + u[..., :, None], axis=-2)
        return (u, v), None

    # The first update (from v = 0) is done outside the scan so the carry derives from the
    # scores: inside shard_map it then has the scores' varying type, as the body's output.
    u = log_mu - jax.nn.logsumexp(couplings, axis=-1)
    v = log_nu - jax.nn.logsumexp(couplings + u[..., :, None], axis=-2)
    if iters > 1:
        (u, v), _ = jax.lax.scan(body, (u, v), None, length=iters - 1)
    return couplings + u[..., :, None] + v[..., None, :] - norm


def dual_softmax(scores: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``softmax(S/t, rows) * softmax(S/t, cols)``: the dual-softmax assignment ``[..., m, n]``."""
    s = scores / temperature
    return jax.nn.softmax(s, axis=-1) * jax.nn.softmax(s, axis=-2)


def _masked_mean(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean of ``x`` over the last two axes where ``mask``; 0 (and count 0) where empty."""
    count = jnp.sum(mask, axis=(-2, -1))
    total = jnp.sum(jnp.where(mask, x, 0.0), axis=(-2, -1))
    return total / jnp.maximum(count, 1), count


def match_loss(plan: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-problem ``(loss, pos, neg)`` of an assignment ``plan [..., m, n]`` against 0/1 ``gt``.

    ``pos`` is the mean of ``-log P`` over ``gt == 1`` (0 for a problem without positives),
    ``neg`` the mean of ``-log(1 - P)`` over ``gt == 0``, with ``P`` clamped to
    ``[1e-6, 1 - 1e-6]`` (docs/method.md section 3.1). Returns arrays of shape ``plan.shape[:-2]``.
    """
    p = jnp.clip(plan, PROB_EPS, 1.0 - PROB_EPS)
    pos_mask = gt > 0.5
    pos, _ = _masked_mean(-jnp.log(p), pos_mask)
    neg, _ = _masked_mean(-jnp.log1p(-p), ~pos_mask)
    return pos + neg, pos, neg


def sharpe_weights(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax-normalised Sharpe ratios ``(max - mean) / std`` of the columns and rows of ``a [..., m, n]``.

    ``std`` is the unbiased one (as torch.std) floored at 1e-6, so constant columns or rows
    give a ratio of 0 instead of NaN. Returns ``(w_col [..., n], w_row [..., m])``.
    """
    def ratio(x, axis):
        k = x.shape[axis]
        mean = jnp.mean(x, axis=axis)
        var = jnp.sum((x - jnp.expand_dims(mean, axis)) ** 2, axis=axis) / max(k - 1, 1)
        std = jnp.sqrt(jnp.maximum(var, SHARPE_STD_EPS ** 2))
        return (jnp.max(x, axis=axis) - mean) / std

    w_col = jax.nn.softmax(ratio(a, -2), axis=-1)
    w_row = jax.nn.softmax(ratio(a, -1), axis=-1)
    return w_col, w_row


def sharpe_loss(cos: jax.Array, gt: jax.Array, detach_weights: bool = True) -> jax.Array:
    """Patch-to-structure consistency per problem (docs/method.md section 3.2), shape ``cos.shape[:-2]``.

    ``A = (1 + cos) / 2``; loss ``= (sum_{gt=1} -log A * w_col + sum_{gt=1} -log A * w_row) / 2
    + mean_{gt=0} -log(1 - A)`` with the Sharpe weights of :func:`sharpe_weights` computed
    from the unclamped ``A``. The reference back-propagates through the weights; we stop
    their gradient by default (docs/method.md section 6), ``detach_weights=False`` keeps it.
    """
    a = (1.0 + cos) / 2.0
    w_col, w_row = sharpe_weights(a)
    if detach_weights:
        w_col, w_row = jax.lax.stop_gradient(w_col), jax.lax.stop_gradient(w_row)
    a = jnp.clip(a, PROB_EPS, 1.0 - PROB_EPS)
    pos_mask = gt > 0.5
    nll = -jnp.log(a)
    pos_col = jnp.sum(jnp.where(pos_mask, nll * w_col[..., None, :], 0.0), axis=(-2, -1))
    pos_row = jnp.sum(jnp.where(pos_mask, nll * w_row[..., :, None], 0.0), axis=(-2, -1))
    neg, _ = _masked_mean(-jnp.log1p(-a), ~pos_mask)
    return (pos_col + pos_row) / 2.0 + neg


def info_nce(query: jax.Array, positive: jax.Array, negatives: jax.Array,
             temperature: float) -> tuple[jax.Array, jax.Array]:
    """Per-query InfoNCE with shared negatives: ``(loss [N], hit [N])`` (docs/method.md section 3.3).

    ``query, positive f32[N, D]``, ``negatives f32[K, D]`` (other crops and the queue);
    logits ``[q.k+, q.k_1..K] / temperature``, cross-entropy with the positive as label 0.
    ``hit`` is 1 where the positive has the largest logit.
    """
    l_pos = jnp.sum(query * positive, axis=-1, keepdims=True)     # [N, 1]
    l_neg = query @ negatives.T                                   # [N, K]
    logits = jnp.concatenate([l_pos, l_neg], axis=-1) / temperature
    loss = jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]
    hit = (jnp.argmax(logits, axis=-1) == 0).astype(query.dtype)
    return loss, hit



def correspondence_hits(plan: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(hits, pairs)``: gt pairs whose src token's argmax over ``plan [..., m, n]`` is its partner, and all gt pairs."""
    best = jax.nn.one_hot(jnp.argmax(plan, axis=-1), plan.shape[-1], dtype=plan.dtype)
    pos = (gt > 0.5).astype(plan.dtype)
    return jnp.sum(best * pos), jnp.sum(pos)
