"""The whole S2DC objective: split-invariance under shard_map, one compile, finiteness; EMA and queue."""
import collections

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from s2dc_jax import data, objectives

CROP = 32


class TinyEncoder(nn.Module):
    """Stand-in for the Swin: f32[N, c, c, c, C] -> f32[N, 2, 2, 2, 16] (avg-pool + Dense)."""

    @nn.compact
    def __call__(self, x):
        n, c, _, _, ch = x.shape
        k = c // 2
        x = x.reshape(n, 2, k, 2, k, 2, k, ch).mean((2, 4, 6))
        return nn.Dense(16)(jnp.concatenate([x, x ** 2], -1))


ENC = TinyEncoder()


def encode(p, x):
    return ENC.apply({"params": p}, x)


def _cfg(**kw):
    cfg = objectives.default_ssl_config()
    cfg.head_hidden, cfg.head_dim, cfg.queue_size, cfg.sinkhorn_iters = 32, 16, 10, 10
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _setup(b, cfg, seed=0, image=None):
    rng = np.random.default_rng(seed)
    vp = [data.sample_view_params(rng, 4) for _ in range(b)]
    batch = {k: np.stack([v[k] for v in vp]) for k in vp[0]}
    batch["image"] = rng.normal(size=(b, 64, 64, CROP, 1)).astype(np.float32) if image is None else image
    params = {"encoder": ENC.init(jax.random.key(0), jnp.zeros((1, CROP, CROP, CROP, 1)))["params"],
              "heads": objectives.init_heads(jax.random.key(1), 16, cfg)}
    teacher = jax.tree.map(lambda x: x * 1.01, params)
    queue = objectives.init_queue(jax.random.key(2), cfg.queue_size, cfg.head_dim)
    return params, teacher, batch, queue


def _loss_and_grad(params, teacher, batch, queue, cfg, axis_name=None):
    return jax.value_and_grad(
        lambda p: objectives.s2dc_loss(p, teacher, encode, batch, queue, cfg, CROP, axis_name=axis_name),
        has_aux=True)(params)


@pytest.mark.parametrize("cfg_kw", [dict(match="sinkhorn"), dict(match="dual_softmax", correspondence="3d")])
def test_shard_map_matches_single_device_and_compiles_once(cfg_kw):
    chex.clear_trace_counter()  # counts are per code location, shared by the parametrised cases
    cfg = _cfg(**cfg_kw)
    params, teacher, batch, queue = _setup(8, cfg)
    (loss1, aux1), g1 = jax.jit(lambda p, b: _loss_and_grad(p, teacher, b, queue, cfg))(params, batch)

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sharded(p, b):
        def body(p, b):
            (loss, aux), g = _loss_and_grad(p, teacher, b, queue, cfg, axis_name="data")
            return jax.lax.pmean(loss, "data"), aux["metrics"], g, aux["keys"]
        return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")),
                             out_specs=(P(), P(), P(), P("data")))(p, b)

    loss8, metrics8, g8, keys8 = sharded(params, batch)
    jax.block_until_ready(loss8)
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    for k in ("loss", "p2p", "p2p_pos", "p2p_neg", "p2s", "global", "corr_acc", "global_acc"):
        np.testing.assert_allclose(float(metrics8[k]), float(aux1["metrics"][k]), rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(np.asarray(keys8), np.asarray(aux1["keys"]), atol=1e-5)
    # Params enter shard_map replicated, so JAX's transpose already sums the per-device
    # gradients of the local means: the sum over 8 devices is 8x the whole-batch gradient.
    for a, b in zip(jax.tree.leaves(g8), jax.tree.leaves(g1)):
        # pre-BN biases have (theoretically zero) gradients of float-noise size: absolute floor
        np.testing.assert_allclose(np.asarray(a) / 8, np.asarray(b), rtol=1e-4,
                                   atol=3e-5 + 1e-4 * float(np.max(np.abs(b))))
    # A second batch of the same shapes must not retrace.
    jax.block_until_ready(sharded(params, jax.tree.map(lambda x: x * 1, batch)))


# Temperatures 0.05-1 for both matchings on blank and collapsed features are also covered,
# loss by loss, in test_objectives_matching.py; here the whole objective on a blank ROI.
@pytest.mark.parametrize("match,temperature", [("sinkhorn", 0.05), ("dual_softmax", 1.0)])
def test_blank_roi_is_finite(match, temperature):
    cfg = _cfg(match=match, temperature=temperature)
    params, teacher, batch, queue = _setup(2, cfg, image=np.full((2, 64, 64, CROP, 1), 0.3, np.float32))
    (loss, aux), grads = jax.jit(lambda p, b: _loss_and_grad(p, teacher, b, queue, cfg))(params, batch)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in aux["metrics"].values())
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_metrics_and_keys():
    cfg = _cfg()
    params, teacher, batch, queue = _setup(2, cfg)
    loss, aux = jax.jit(lambda p, b: objectives.s2dc_loss(p, teacher, encode, b, queue, cfg, CROP))(params, batch)
    m = aux["metrics"]
    np.testing.assert_allclose(float(m["loss"]), 0.5 * (float(m["p2p"]) + float(m["p2s"]) + float(m["global"])),
                               rtol=1e-6)
    np.testing.assert_allclose(float(m["p2p"]), float(m["p2p_pos"]) + float(m["p2p_neg"]), rtol=1e-6)
    assert 0.0 <= float(m["corr_acc"]) <= 1.0
    assert aux["keys"].shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(aux["keys"]), axis=-1), 1.0, atol=1e-5)


def test_correspondence_hits_matches_numpy():
    rng = np.random.default_rng(0)
    plan = rng.uniform(size=(3, 6, 7))
    gt = np.zeros((3, 6, 7))
    gt[:, np.arange(6), rng.integers(0, 7, size=6)] = 1
    gt[:, 5] = 0  # a token without partner does not count
    hits, pairs = objectives.correspondence_hits(jnp.asarray(plan), jnp.asarray(gt))
    want = sum(gt[p, i, plan[p, i].argmax()] for p in range(3) for i in range(6))
    assert float(pairs) == gt.sum() and float(hits) == want


def test_bad_config_and_batch_raise():
    cfg = _cfg()
    params, teacher, batch, queue = _setup(2, cfg)
    with pytest.raises(ValueError, match="ssl.match"):
        objectives.s2dc_loss(params, teacher, encode, batch, queue, _cfg(match="ot"), CROP)
    with pytest.raises(ValueError, match="ssl.correspondence"):
        objectives.s2dc_loss(params, teacher, encode, batch, queue, _cfg(correspondence="2d"), CROP)
    with pytest.raises(ValueError, match="crop_affine"):
        bad = dict(batch, crop_affine=batch["crop_affine"][:, :3])
        objectives.s2dc_loss(params, teacher, encode, bad, queue, cfg, CROP)
    with pytest.raises(ValueError, match="missing"):
        objectives.s2dc_loss(params, teacher, encode, {"image": batch["image"]}, queue, cfg, CROP)
    with pytest.raises(ValueError, match="must equal crop_size"):
        objectives.s2dc_loss(params, teacher, encode, batch, queue, cfg, 16)


def test_ema_update():
    t = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
    s = {"a": jnp.zeros(3), "b": {"c": jnp.ones((2, 2))}}
    out = objectives.ema_update(t, s, 0.999)
    np.testing.assert_allclose(np.asarray(out["a"]), 0.999, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(out["b"]["c"]), 0.001, rtol=1e-5)


def test_ema_momentum_schedules_against_float64():
    steps = np.arange(0, 151, 10)
    want = 1.0 - (1.0 - 0.99) * (np.cos(np.pi * np.minimum(steps / 150.0, 1.0)) + 1.0) / 2.0
    got = [float(objectives.ema_momentum(jnp.asarray(s), 0.99, "cosine", 150)) for s in steps]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got[0] == pytest.approx(0.99) and got[-1] == pytest.approx(1.0) and np.all(np.diff(got) >= 0)
    assert float(objectives.ema_momentum(jnp.asarray(500), 0.99, "cosine", 150)) == pytest.approx(1.0)  # past the end
    assert float(objectives.ema_momentum(jnp.asarray(70), 0.996, "constant", 150)) == pytest.approx(0.996)
    with pytest.raises(ValueError, match="ema_schedule"):
        objectives.ema_momentum(0, 0.99, "linear", 150)


@pytest.mark.parametrize("size,batch", [(10, 3), (12, 8), (6, 8), (5, 5), (200, 8)])
def test_queue_update_is_fifo(size, batch):
    """Against a deque fed one key at a time: any K, any B (B not dividing K, B > K)."""
    chex.clear_trace_counter()
    d = 4
    queue = objectives.init_queue(jax.random.key(0), size, d)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(queue), axis=1), 1.0, atol=1e-6)
    ref = collections.deque([tuple(r) for r in np.asarray(queue)], maxlen=size)
    ptr = jnp.zeros((), jnp.int32)
    update = jax.jit(chex.assert_max_traces(lambda q, p, k: objectives.queue_update(q, p, k), n=1))
    for step in range(5):
        keys = np.arange(batch * d, dtype=np.float32).reshape(batch, d) + 1000 * step
        queue, ptr = update(queue, ptr, jnp.asarray(keys))
        ref.extend(tuple(k) for k in keys)
        # the slot at ptr holds the oldest key: rolling by -ptr gives oldest-first order
        np.testing.assert_array_equal(np.roll(np.asarray(queue), -int(ptr), axis=0), np.array(ref, np.float32))
        assert int(ptr) == ((step + 1) * batch) % size
