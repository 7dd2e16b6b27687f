"""Model options without a reference: remat, bf16 compute, chunked window attention, shard_map, bad arguments;
the fast paths against the plain operations they replace (kept query rows, patch matmul)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from s2dc_jax.models import SwinTransformer3D, SwinUNETR
from s2dc_jax.models.swin import _partition, _PatchProj, query_classes, relative_position_index, shift_mask

# depth 2 in stage 1 gives one shifted (masked) block; the later stages need only one block each
TINY = dict(in_channels=1, feature_size=12, depths=(2, 1, 1, 1), num_heads=(3, 3, 3, 3), window_size=4)


def _x(shape=(32, 32, 32), b=1, c=1, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randn(b, *shape, c).astype(np.float32))


def _params(model, x, seed=0):
    """Random params of the model's tree from shapes alone: `init` compiles slowly on CPU, tests need many."""
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray((1.0 if path[-1].key == "scale" else 0.0) + 0.1 * rng.randn(*s.shape), jnp.float32),
        shapes,
    )


def _proj(o, seed):
    # a fixed random projection: the outputs are LayerNorm'd, so a mean square would be constant
    w = np.random.RandomState(seed).randn(*o.shape[1:]).astype(np.float32)
    return jnp.mean(o * w)


def _loss(model, params, x):
    return sum(_proj(o, i) for i, o in enumerate(model.apply({"params": params}, x)))


def test_stage_shapes_and_normalisation():
    model = SwinTransformer3D(**TINY)
    x = _x((32, 48, 16))
    params = _params(model, x)
    both = lambda p, x: (model.apply({"params": p}, x), model.apply({"params": p}, x, normalize=False))  # noqa: E731
    outs, raw = jax.jit(both)(params, x)
    assert [o.shape for o in outs] == [(1, 16, 24, 8, 12), (1, 8, 12, 4, 24), (1, 4, 6, 2, 48),
                                       (1, 2, 3, 1, 96), (1, 1, 2, 1, 192)]
    for o, r in zip(outs, raw):  # normalize=True: LayerNorm without affine over channels of the raw output
        r = np.asarray(r, np.float64)
        want = (r - r.mean(-1, keepdims=True)) / np.sqrt(r.var(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(np.asarray(o), want, atol=1e-4)
    assert not np.allclose(np.asarray(raw[-1]), np.asarray(outs[-1]))


def test_remat_changes_nothing_numerically():
    x = _x()
    plain = SwinTransformer3D(**TINY, use_v2=True)
    remat = SwinTransformer3D(**TINY, use_v2=True, remat=True)
    params = _params(plain, x)
    assert jax.tree.structure(params) == jax.tree.structure(_params(remat, x))
    l0, g0 = jax.jit(jax.value_and_grad(lambda p: _loss(plain, p, x)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: _loss(remat, p, x)))(params)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-5)  # float32 sums fused differently
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size,window,shift", [
    ((16, 16, 16), (7, 7, 7), (0, 0, 0)), ((16, 16, 16), (7, 7, 7), (3, 3, 3)), ((8, 8, 8), (7, 7, 7), (3, 3, 3)),
    ((20, 9, 16), (7, 7, 4), (3, 3, 2)), ((16, 16, 16), (4, 4, 4), (2, 2, 2))])
def test_query_classes_keep_exactly_the_rows_the_crop_keeps(size, window, shift):
    """Against the plain path: pad, roll, partition a map of position ids; every real position's
    (window, row) there is where out_index sends it, and each window is in one class."""
    padded = [-(-s // w) * w for s, w in zip(size, window)]
    ids = np.full(padded, -1)
    ids[:size[0], :size[1], :size[2]] = np.arange(np.prod(size)).reshape(size)
    ids = np.roll(ids, [-s for s in shift], axis=(0, 1, 2))
    win = np.asarray(_partition(ids[None, ..., None], window))[0, ..., 0]        # [nW, N] position ids
    classes, out_index = query_classes(size, window, shift)
    assert sorted(np.concatenate([w for w, _ in classes]).tolist()) == list(range(win.shape[0]))
    flat = np.concatenate([np.take_along_axis(win[w], r, 1).ravel() for w, r in classes])  # each computed row's id
    assert len(out_index) == np.prod(size) and (flat[out_index] == np.arange(np.prod(size))).all()
    assert (flat >= 0).sum() == np.prod(size)                                   # every real row computed once
    if any(p > s for p, s in zip(padded, size)):
        assert len(flat) < win.size                                             # pad rows left out


def test_patch_matmul_is_the_strided_convolution():
    """Same parameter tree and init as flax's nn.Conv (checkpoints and MONAI weights load unchanged)."""
    import flax.linen as nn

    x = _x((32, 16, 8), b=2, c=2)
    conv = nn.Conv(12, (2, 2, 2), strides=(2, 2, 2), padding="VALID")
    ours = _PatchProj(12, (2, 2, 2))
    params = ours.init(jax.random.key(0), x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params,
                                     conv.init(jax.random.key(0), x)))
    np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), atol=1e-5)


def test_chunked_attention_equals_unchunked():
    x = _x()
    # window 7 on the 16^3 stage 1: 27 padded windows in classes of 8, 12, 6 and 1 (query_classes;
    # those of 12 and 6 with a bias per window); chunks of 3 need padding in the classes of 8 and 1
    full = SwinTransformer3D(**dict(TINY, window_size=7))
    chunked = SwinTransformer3D(**dict(TINY, window_size=7), attn_chunk=3)
    params = _params(full, x, seed=1)
    l0, g0 = jax.jit(jax.value_and_grad(lambda p: _loss(full, p, x)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: _loss(chunked, p, x)))(params)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-5)  # float32 sums fused differently
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bf16_compute_keeps_fp32_params_and_stays_close():
    x = _x()
    f32 = SwinTransformer3D(**TINY, use_v2=True)
    bf16 = SwinTransformer3D(**TINY, use_v2=True, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(bf16.init, jax.random.key(2), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    params = _params(f32, x, seed=2)
    a, b = jax.jit(lambda p: (f32.apply({"params": p}, x)[-1], bf16.apply({"params": p}, x)[-1]))(params)
    assert b.dtype == jnp.float32
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert rel < 0.1, rel  # bf16 has ~3 significant digits; a broken cast gives O(1)


def _flat(tree):
    return jnp.concatenate([g.ravel() for g in jax.tree.leaves(tree)])


def test_last_stage_under_shard_map_with_remat_and_bf16():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    x = _x(b=8)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ref_model = SwinTransformer3D(**TINY, use_v2=True)
    params = _params(ref_model, x[:1], seed=3)
    ref_loss, ref_g = jax.jit(jax.value_and_grad(
        lambda q: jnp.mean(jax.vmap(lambda xi: _proj(ref_model.apply({"params": q}, xi[None])[-1], 0))(x))))(params)

    for dtype, tol in [(jnp.float32, 1e-4), (jnp.bfloat16, 0.3)]:
        model = SwinTransformer3D(**TINY, use_v2=True, remat=True, dtype=dtype, attn_chunk=4)

        def step(p, xb):  # per device: one crop
            # p enters replicated, so the transpose of its implicit broadcast psums the per-device
            # gradients: dividing the local loss by the device count makes that sum the batch mean
            loss, g = jax.value_and_grad(lambda q: _proj(model.apply({"params": q}, xb)[-1], 0) / 8)(p)
            return jax.lax.psum(loss, "data"), g

        sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())))
        loss, grads = jax.block_until_ready(sharded(params, xs))
        assert all(bool(jnp.isfinite(g).all()) and g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=tol, atol=tol * 0.1)
        # bf16 gradients carry rounding noise of ~10%; a wrong reduction or sharding is off by O(1)
        rel = float(jnp.linalg.norm(_flat(grads) - _flat(ref_g)) / jnp.linalg.norm(_flat(ref_g)))
        assert rel < tol, (dtype, rel)


def test_relative_position_index_and_mask_against_loops():
    # the index against its definition: offsets shifted to >= 0, mixed radix (2w - 1), last axis fastest
    win = (3, 2, 4)
    idx = relative_position_index(win)
    coords = [(i, j, k) for i in range(3) for j in range(2) for k in range(4)]
    for a, (i0, j0, k0) in enumerate(coords):
        for b, (i1, j1, k1) in enumerate(coords):
            di, dj, dk = i0 - i1 + 2, j0 - j1 + 1, k0 - k1 + 3
            assert idx[a, b] == (di * 3 + dj) * 7 + dk
    # mask: two tokens of a window may attend to each other iff they came from the same shifted region
    dims, win, shift = (8, 8, 4), (4, 4, 4), (2, 2, 0)
    m = shift_mask(dims, win, shift)
    assert m.shape == (4, 64, 64)
    region = lambda p, n, w, s: 0 if p < n - w else (1 if p < n - s else 2) if s else 0  # noqa: E731
    for wi, (a0, a1, a2) in enumerate([(a, b, c) for a in range(2) for b in range(2) for c in range(1)]):
        toks = [(a0 * 4 + i, a1 * 4 + j, a2 * 4 + k) for i in range(4) for j in range(4) for k in range(4)]
        reg = [tuple(region(p, n, w, s) for p, n, w, s in zip(t, dims, win, shift)) for t in toks]
        want = np.array([[0.0 if r == q else -100.0 for q in reg] for r in reg])
        np.testing.assert_array_equal(m[wi], want)


def test_swinunetr_output_shape_and_bf16():
    model = SwinUNETR(in_channels=2, out_channels=5, feature_size=12, depths=(2, 1, 1, 1), num_heads=(3, 3, 3, 3),
                      window_size=4,
                      dtype=jnp.bfloat16, remat=True)
    x = _x((32, 64, 32), c=2)
    params = _params(model, x)
    y = jax.jit(model.apply)({"params": params}, x)
    assert y.shape == (1, 32, 64, 32, 5) and y.dtype == jnp.float32
    assert bool(jnp.isfinite(y).all())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_heads=(3, 5, 3, 3)), "num_heads"),
        (dict(depths=(2, 2, 2)), "depths"),
        (dict(window_size=(7, 7)), "window_size"),
        (dict(downsample="pool"), "downsample"),
        (dict(dropout_path_rate=0.1), "dropout_path_rate"),
        (dict(spatial_dims=2), "spatial_dims"),
        (dict(attn_chunk=0), "attn_chunk"),
    ],
)
def test_encoder_bad_arguments_name_the_field(kwargs, field):
    args = dict(TINY, **kwargs)
    with pytest.raises(ValueError, match=field):
        jax.eval_shape(SwinTransformer3D(**args).init, jax.random.key(0), _x())


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="channels last"):
        jax.eval_shape(SwinTransformer3D(**TINY).init, jax.random.key(0), _x(c=2))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        jax.eval_shape(SwinUNETR(in_channels=1, out_channels=2, feature_size=12).init, jax.random.key(0),
                       _x((32, 48, 32)))
    with pytest.raises(ValueError, match="feature_size"):
        jax.eval_shape(SwinUNETR(in_channels=1, out_channels=2, feature_size=16).init, jax.random.key(0), _x())
    with pytest.raises(ValueError, match="norm_name"):
        bad = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, norm_name="batch")
        jax.eval_shape(bad.init, jax.random.key(0), _x())
