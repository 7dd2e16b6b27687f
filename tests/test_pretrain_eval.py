"""Held-out evaluation of pretraining: the shared correspondence function, fixed views, baselines, probe, no effect."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2dc_jax import data, objectives
from s2dc_jax.interop.workdir import load_params
from s2dc_jax.tasks import pretrain_config as config_lib
from s2dc_jax.tasks import pretrain_eval as ev
from s2dc_jax.tasks.pretrain import PretrainTask
from s2dc_jax.training import loop
from s2dc_jax.training.mesh import make_mesh


def tiny_config(**overrides):
    c = config_lib.shrink(config_lib.pretrain_config())
    c.batch_size = 2
    for k, v in overrides.items():
        obj = c
        *path, last = k.split(".")
        for p in path:
            obj = obj[p]
        obj[last] = v
    return c


def _affines(n, seed=3):
    return np.stack([data.sample_view_params(ev.fixed_view_rng(seed, i, 0), 16)["full_affine"] for i in range(n)])


def test_nearest_matches_is_one_for_identity_tokens_and_chance_for_constant_ones():
    roi, ts = (128, 128, 32), 16
    gt = np.asarray(objectives.ground_truth(jnp.asarray(_affines(6)), roi, ts))        # [6, 64, 64]
    v, m, _ = gt.shape
    q = np.broadcast_to(np.eye(m, 2 * m), (v, m, 2 * m))                               # src token i -> e_i
    # aug token j -> e_(its partner), or a vector of its own when it has none
    partner = np.where(gt.any(1), gt.argmax(1), m + np.arange(m))                       # [6, 64]
    k = np.eye(2 * m)[partner]
    r = ev.nearest_matches(jnp.asarray(q), jnp.asarray(k), jnp.asarray(gt))
    assert float(r["pairs"]) == gt.sum() > 100
    assert float(r["hits"]) == float(r["pairs"])
    assert np.all(np.asarray(r["right"])[gt.any(-1)])
    c = ev.nearest_matches(jnp.ones((v, m, 8)), jnp.ones((v, m, 8)), jnp.asarray(gt))
    assert float(c["hits"]) / float(c["pairs"]) <= 1.0 / m * 1.5        # at or below chance (1/M)
    # a wrong partner scores: shift every aug token's identity by one
    w = ev.nearest_matches(jnp.asarray(q), jnp.asarray(np.roll(k, 1, axis=1)), jnp.asarray(gt))
    assert float(w["hits"]) < 0.2 * float(w["pairs"])


def _position_image(roi):
    """Channels (x, y, 1, 0): a voxel's own in-plane position, a ones channel and a view flag (the shift sets it)."""
    x, y, z = roi
    gx, gy = np.meshgrid(np.arange(x), np.arange(y), indexing="ij")
    img = np.stack([gx, gy, np.ones_like(gx), np.zeros_like(gx)], -1).astype(np.float32)
    return np.repeat(img[:, :, None], z, axis=2)                                      # [X, Y, Z, 4]


def _oracle_encode(_params, crops):
    """An encoder that is the identity on tokens: it decodes where each token's content came from.

    src tokens get ``f(c)``, aug tokens ``g(p)`` with ``f(c).g(p) = M^2 - |c - p|^2 / 2`` and
    ``|g|`` constant, so a src token's top-1 cosine is the aug token whose content comes from
    nearest to its centre: its ground-truth partner (the inverse is a similarity, so that is the
    aug token containing the src centre's image). Stages: [finer (16-voxel tokens), last (32)].
    """
    n, c = crops.shape[0], crops.shape[1]
    out = []
    for s in (c // 2, c):
        t = c // s
        v = crops.reshape(n, t, s, t, s, t, s, 4)[:, :, s // 2 - 1:s // 2 + 1, :, s // 2 - 1:s // 2 + 1, :,
                                                  s // 2 - 1:s // 2 + 1].mean(axis=(2, 4, 6))   # [n, t, t, t, 4]
        flag = v[..., 3]
        w = v[..., 2] - flag
        pos = ((v[..., :2] - flag[..., None]) / jnp.maximum(w, 1e-6)[..., None] + 0.5) / s   # token units
        sq = jnp.sum(pos ** 2, -1, keepdims=True)
        one, zero, big = jnp.ones_like(sq), jnp.zeros_like(sq), 3.0 * jnp.ones_like(sq)
        f = jnp.concatenate([pos, -sq / 2, one, zero, big], -1)
        g = jnp.concatenate([pos, one, -sq / 2, jnp.sqrt(1e5 - sq - 1 - sq ** 2 / 4), big], -1)
        aug = (flag > 0.5)[..., None]
        # a centre sampled partly from the zero padding decodes a position pulled inwards: no candidate
        g = jnp.where((w > 0.999)[..., None], g, 0.0)
        out.append(jnp.where(aug, g, f))
    return out


def test_evaluation_is_one_for_an_identity_encoder_and_chance_for_a_constant_one():
    """Through the evaluation's own views, token grids and ground truth (analyse_view, as evaluate and the figures)."""
    roi, crop = (128, 128, 32), 32
    ssl = objectives.default_ssl_config()
    ssl.head_hidden, ssl.head_dim = 16, 8
    img = jnp.asarray(_position_image(roi))
    params = {"encoder": {}, "heads": objectives.init_heads(jax.random.PRNGKey(0), 6, ssl)}
    run = jax.jit(lambda p, a, enc: ev.analyse_view(enc, p, img, a, jnp.float32(1.0), ssl_cfg=ssl, crop_size=crop),
                  static_argnums=2)
    constant = lambda p, x: [jnp.ones(o.shape[:-1] + (6,)) for o in _oracle_encode(p, x)]  # noqa: E731
    counts = {k: np.zeros(4) for k in ("last", "finer")}   # hits, pairs, pairs scored, their hits
    const = {k: np.zeros(2) for k in ("last", "finer")}
    for a in _affines(4):
        r, c = run(params, jnp.asarray(a), _oracle_encode), run(params, jnp.asarray(a), constant)
        for k in counts:
            lv = jax.tree.map(np.asarray, {n: r[k][n] for n in ("gt", "right", "has_gt", "aug", "hits", "pairs")})
            # aug tokens whose centre the warp sampled partly from the zero padding cannot say where
            # their content came from (the oracle gives them 0): pairs with such a partner are not scored
            ok = np.abs(lv["aug"]).sum(-1) > 0                                          # [gx, gy, gz]
            decodable = np.einsum("smn,sn->sm", lv["gt"], ok.reshape(-1, ok.shape[2]).T) > 0
            scored = lv["has_gt"] & decodable
            counts[k] += [lv["hits"], lv["pairs"], scored.sum(), (lv["right"] & scored).sum()]
            assert lv["hits"] == lv["right"][lv["has_gt"]].sum() and lv["pairs"] == lv["has_gt"].sum()
            const[k] += [float(c[k]["hits"]), float(c[k]["pairs"])]
    for k, m in (("last", 16), ("finer", 64)):
        hits, pairs, scored, right = counts[k]
        assert scored > 20 and right == scored, (k, counts[k])       # exactly 1.0 where the content is known
        assert scored >= 0.95 * pairs and hits >= 0.95 * pairs, (k, counts[k])
        assert const[k][0] / const[k][1] <= 1.5 / m, (k, const[k])     # chance is 1/M


def test_fixed_views_depend_on_seed_and_index_only(tmp_path):
    path = data.write_phantom_dataset(tmp_path, num=3, modality="ct", shape=(48, 40, 24), labels=False, targets=False)
    paths = [r["image"] for r in data.read_datalist(path)]
    c = tiny_config()
    a = ev.make_fixed_views(paths, c.data, seed=0, views_per_volume=2)
    b = ev.make_fixed_views(paths, tiny_config(**{"data.workers": 3, "seed": 7}).data, seed=0, views_per_volume=2)
    for x, y in ((a.image, b.image), (a.affine, b.affine), (a.shift, b.shift)):
        np.testing.assert_array_equal(x, y)
    # view (volume 2, view 1) alone is the same as within the list; another seed is another view
    img, aff, _ = ev.fixed_view(paths[2], 2, 1, c.data, seed=0)
    np.testing.assert_array_equal(aff, a.affine[5])
    np.testing.assert_array_equal(img, a.image[5, ..., 0])
    assert not np.allclose(ev.make_fixed_views(paths, c.data, seed=1, views_per_volume=2).affine, a.affine)
    assert a.image.shape == (6, *c.data.roi_large, 1) and len({tuple(x) for x in a.affine}) == 6


@pytest.mark.slow
def test_evaluation_is_the_same_on_one_and_four_devices(tmp_path):
    path = data.write_phantom_dataset(tmp_path, num=3, modality="ct", shape=(64, 64, 32), labels=False, targets=False)
    paths = [r["image"] for r in data.read_datalist(path)]
    c = tiny_config(**{"eval.random_inits": 0, "eval.views_per_volume": 1})
    scores = []
    for n in (1, 4):        # 3 views: one device holds all, or 4 hold one each (one a weight-0 pad)
        task = PretrainTask(c)
        e = ev.HeldOutEval(c, task.encoder, make_mesh(n), task._init_params)
        e.load(paths, [], lambda _: None)
        scores.append(e.evaluate(e.random_params(0)))       # any fixed params will do
        del scores[-1]["seconds"]
    assert scores[0] == scores[1]
    assert set(scores[0]) == {"corr_last", "corr_finer", "corr_head", "raw_corr_last", "raw_corr_finer"}
    assert all(0 <= v <= 1 for v in scores[0].values())


def test_random_baseline_is_the_mean_over_the_draws_and_the_log_gives_their_spread():
    """One random init is a poor baseline (demo views: 0.11-0.35 at the last stage): the mean over eval.random_inits."""
    c = tiny_config(**{"eval.random_inits": 3})
    e = ev.HeldOutEval(c, encoder=None, mesh=None, init_params=None)
    e.views = object()                                   # held-out views exist; correspondence is stubbed below
    last = {0: 0.1, 1: 0.4, 2: 0.25}
    e.random_params = lambda k: k
    e.correspondence = lambda k: {"last": last[k], "finer": 0.2, "head": 0.3, "raw_last": 0.5, "raw_finer": 0.3}
    lines = []
    e._log = lines.append
    out = e.compute_baselines()
    assert out["random_corr_last"] == pytest.approx(0.25) and out["raw_corr_last"] == 0.5
    assert "random inits from 3 draws, lowest-highest: last 0.100-0.400, finer 0.200-0.200" in lines[0]
    assert e.compute_baselines() is out and len(lines) == 1     # once


def test_probe_and_token_labels():
    lab = np.zeros((8, 8, 4), np.int32)
    lab[:4, :4, :2] = 2                      # token (0, 0): half of it label 2
    lab[:4, :4, 2:] = 1                      # ... and the other half label 1 (a tie: the lower label)
    lab[4:, :1, :] = 3                       # token (1, 0): a quarter label 3
    lab[:1, 4:, :1] = 1                      # token (0, 1): 1/16 label 1, under min_fraction
    np.testing.assert_array_equal(ev.token_labels(lab, 4)[:, :, 0], [[1, 0], [3, 0]])
    np.testing.assert_array_equal(ev.token_labels(lab, 4, min_fraction=0.5)[:, :, 0], [[1, 0], [0, 0]])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = np.eye(3)[y] * 3 + rng.normal(size=(300, 3)) * 0.1
    r = ev.fit_probe(x[:200], y[:200], x[200:], y[200:])
    assert r["acc"] == 1.0 and r["dice"] == 1.0 and {"dice_1", "dice_2"} <= set(r)
    noise = ev.fit_probe(rng.normal(size=(200, 3)), y[:200], rng.normal(size=(100, 3)), y[200:])
    assert noise["acc"] < 0.6
    assert ev.fit_probe(x[:10], np.zeros(10, int), x[10:20], y[10:20]) == {}


@pytest.mark.parametrize("field,value", [
    ("eval_every", -1), ("image_every", -2), ("eval.raw_pool", 3), ("eval.views_per_volume", 0),
    ("eval.probe_level", "head"), ("eval.probe_train_fraction", 1.0), ("eval.probe_min_fraction", 0.0),
    ("data.val_fraction", 1.0),
])
def test_validate_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"config.{field}"):
        config_lib.validate(tiny_config(**{field: value}), device_count=2)


def test_evaluation_needs_held_out_volumes():
    with pytest.raises(ValueError, match="config.data.val_datalist: held-out evaluation"):
        config_lib.validate(tiny_config(eval_every=2), device_count=2)
    config_lib.validate(tiny_config(eval_every=2, **{"eval.phantoms": 2}), device_count=2)
    config_lib.validate(tiny_config(eval_every=2, **{"data.val_fraction": 0.25}), device_count=2)
    assert config_lib.pretrain_config().eval_every == 0 and config_lib.pretrain_config().image_every == 0
    with pytest.raises(ValueError, match="config.data.val_fraction: give data.val_datalist or"):
        config_lib.validate(tiny_config(**{"data.val_fraction": 0.2, "data.val_datalist": "v.json"}), device_count=2)


def test_val_fraction_holds_volumes_out_of_training(tmp_path):
    path = data.write_phantom_dataset(tmp_path / "d", num=4, modality="ct", shape=(40, 40, 24), labels=False,
                                      targets=False)
    c = tiny_config(eval_every=2, **{"data.phantoms": 0, "data.datalist": path, "data.val_fraction": 0.25,
                                     "eval.views_per_volume": 1})
    task = PretrainTask(c)
    task.mesh = make_mesh(1)
    lines = []
    task.prepare(tmp_path / "w", lines.append)
    train = {r["image"] for r in data.read_datalist(task.config.data.datalist)}
    val = [r["image"] for r in data.read_datalist(task.config.data.val_datalist, split="validation")]
    assert len(train) == 3 and len(val) == 1 and not train & set(val)
    assert task.heldout.views.paths == val and any("held out 1 of 4" in s for s in lines)


@pytest.mark.parametrize("have_sklearn", [True, False])
def test_held_out_phantoms_are_probed_only_with_scikit_learn(tmp_path, monkeypatch, have_sklearn):
    """The demo evaluates held-out phantoms; without scikit-learn (not a base dependency) it skips the probe, says so."""
    from s2dc_jax.tasks import pretrain

    monkeypatch.setattr(pretrain, "_have_sklearn", lambda: have_sklearn)
    c = tiny_config(eval_every=2, **{"data.phantoms": 2, "data.phantom_shape": (40, 40, 24), "eval.phantoms": 2,
                                     "eval.views_per_volume": 1, "eval.random_inits": 1})
    task = PretrainTask(c)
    task.mesh = make_mesh(1)
    lines = []
    task.prepare(tmp_path / "w", lines.append)
    assert bool(task.config.eval.probe_datalist) == have_sklearn
    assert any("no linear probe" in s for s in lines) != have_sklearn


@pytest.mark.slow
def test_evaluation_does_not_change_the_training_trajectory(tmp_path):
    """2 steps through the loop with held-out evaluation, probe and pictures every step, and without: same params.

    Also the in-process end-to-end run of pretraining: the step is traced once per run.
    """
    base = dict(total_steps=2, **{"data.phantoms": 2, "data.phantom_shape": (64, 64, 32), "num_devices": 2,
                                  "checkpoint_every": 2})
    on = tiny_config(eval_every=1, image_every=1, **base, **{
        "eval.phantoms": 2, "eval.at_start": True, "eval.views_per_volume": 1, "eval.random_inits": 1})
    results = []
    for config, name in ((on, "on"), (tiny_config(**base), "off")):
        chex.clear_trace_counter()  # chex counts per function, and both tasks share PretrainTask.train_step
        task = PretrainTask(config)
        task.train_step = chex.assert_max_traces(task.train_step, n=1)  # one compile per run, evaluation or not
        results.append(loop.run(task, tmp_path / name))
    r_on = results[0]
    a, _ = load_params(tmp_path / "on")
    b, _ = load_params(tmp_path / "off")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert [s for s, _ in r_on["history"]] == [0, 1, 2]
    first, last = r_on["history"][0][1], r_on["history"][-1][1]
    for k in ("corr_last", "corr_finer", "corr_head", "random_corr_last", "raw_corr_last"):
        assert 0.0 <= last[k] <= 1.0
    # the baselines are computed once: the same numbers at every evaluation
    assert all(first[k] == last[k] for k in first if k.startswith(("random_", "raw_")))
    log = (tmp_path / "on" / "log.txt").read_text()
    assert "eval step 0 " in log and '"val/raw_corr_last"' in log and "held-out evaluation: 2 volumes" in log
    assert (tmp_path / "on" / "predictions" / "correspondence.png").stat().st_size > 10_000
