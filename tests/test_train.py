"""Pretraining: config checks, exact data parallelism, non-finite steps, the loop end to end."""
from pathlib import Path

import jax
import numpy as np
import pytest

from s2dc_jax.data.view_params import sample_view_params
from s2dc_jax.tasks import pretrain_config as config_lib
from s2dc_jax.tasks.pretrain import PretrainTask
from s2dc_jax.training.loop import compile_step, create_state
from s2dc_jax.training.mesh import batch_sharding, make_mesh, to_global

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    """The ':tiny' preset with the demo's plain Swin blocks and window 4: the v2 convolution blocks add a
    fifth to every compile and half to every CPU step, window 7's padded windows (query_classes) a few
    attention calls per block; both have their own parity tests (test_models_parity.py, test_models.py)
    and the command-line runs of configs/ct1k.py:tiny (test_train_runs.py) train with them."""
    c = config_lib.shrink(config_lib.pretrain_config())
    c.model.use_v2 = False
    c.model.window_size = 4  # as the demo: whole windows on the 16^3 stage, no padded-row classes to compile
    for k, v in overrides.items():
        obj = c
        *path, last = k.split(".")
        for p in path:
            obj = obj[p]
        obj[last] = v
    return c


def random_batch(seed, b, roi, crop):
    """A global batch of random ROIs with host-sampled view parameters, as the loader gives."""
    rng = np.random.default_rng(seed)
    x, y, z = roi
    n = (x // crop) * (y // crop)
    views = [sample_view_params(rng, n) for _ in range(b)]
    batch = {k: np.stack([v[k] for v in views]) for k in views[0]}
    # smooth-ish random volumes so that the matching has structure to find
    img = rng.normal(size=(b, x // 8, y // 8, z // 8)).astype(np.float32)
    img = img.repeat(8, 1).repeat(8, 2).repeat(8, 3)[..., None]
    batch["image"] = img
    return batch


def run_steps(config, num_devices, batches):
    """The loop's compiled step, applied to ``batches`` on the first ``num_devices`` devices."""
    mesh = make_mesh(num_devices)
    task = PretrainTask(config)
    state = create_state(task, mesh)
    step = compile_step(task, mesh)
    losses = []
    for b in batches:
        state, m = step(state, to_global(b, batch_sharding(mesh)))
        losses.append(float(m["loss"]))  # blocks on the step (several CPU devices can hang otherwise)
    return jax.device_get(state), losses


def eight_and_one_device_agree(config, batches):
    """The loop's step on 8 devices and on 1: same losses and parameters (1e-5); both runs returned."""
    s8, l8 = run_steps(config, 8, batches)
    s1, l1 = run_steps(config, 1, batches)
    np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return s8, l8, s1, l1


@pytest.mark.parametrize("field,value", [
    ("batch_size", 3), ("model.dtype", "float16"), ("data.crop_size", 48),
    ("data.roi_large", (64, 64, 64)), ("optim.lr", 0.0), ("model.num_heads", (1, 1, 5, 2)),
    ("ssl.match", "hungarian"), ("ssl.temperature", 0.0), ("ssl.ema_schedule", "linear"),
])
def test_validate_names_the_field(field, value):
    c = tiny_config(**{"batch_size": 2, field: value})
    with pytest.raises(ValueError, match=f"config.{field}"):
        config_lib.validate(c, device_count=2)


def test_heads_split_each_stage():
    """Stage i has feature_size * 2**i channels: feature 12 with the paper's heads (3, 6, 12, 24) is valid."""
    config_lib.validate(tiny_config(**{"model.num_heads": (3, 6, 12, 24)}), device_count=1)
    with pytest.raises(ValueError, match="stage 2 has 24 channels"):
        config_lib.validate(tiny_config(**{"model.num_heads": (3, 9, 12, 24)}), device_count=1)


@pytest.mark.parametrize("name,modality,match,queue", [
    ("ct1k", "ct", "sinkhorn", 90), ("ct10k", "ct", "sinkhorn", 800),
    ("mri6k", "mri", "dual_softmax", 800), ("pet3k", "pet", "dual_softmax", 800)])
def test_presets(name, modality, match, queue):
    from ml_collections import config_flags  # noqa: F401  (the same loader the launcher uses)
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert (c.data.modality, c.ssl.match, c.ssl.queue_size) == (modality, match, queue)
    assert c.ssl.sinkhorn_iters == 100 and c.model.feature_size == 48 and c.data.roi_large == (384, 384, 96)
    assert c.optim.lr == 3e-4 and c.optim.weight_decay == 0.1 and c.optim.warmup_steps == 500
    config_lib.validate(c, device_count=1)
    tiny = mod.get_config("tiny")
    config_lib.validate(tiny, device_count=1)
    assert tiny.model.feature_size < c.model.feature_size
    with pytest.raises(ValueError, match="variant"):
        mod.get_config("huge")


@pytest.mark.slow
def test_data_parallel_is_exact():
    """8 devices and 1 device, same global batch of 8: same losses and parameters after 2 steps.

    The crops go through the encoder in groups of 2 (the memory-bounded path that paper-size
    configs take; test_memory.py: it equals the one-call path on one device). The second step
    sees the first one's teacher, Adam moments and enqueued keys.
    """
    # lr 1e-4: float32 gradients differ by ~5e-5 relative between the two summation orders,
    # and Adam divides that noise by sqrt(v); at the tiny preset's 3e-4 it reaches 2e-5.
    c = tiny_config(batch_size=8, **{"optim.lr": 1e-4, "model.crop_group": 2})
    batches = [random_batch(s, 8, c.data.roi_large, c.data.crop_size) for s in range(2)]
    s8, l8, s1, _ = eight_and_one_device_agree(c, batches)
    np.testing.assert_allclose(s8["queue"], s1["queue"], rtol=1e-5, atol=1e-5)
    assert int(s8["step"]) == 2 and np.isfinite(l8).all()


def test_nonfinite_step_is_skipped():
    """The loop's step undoes an update whose loss is NaN (teacher and queue too) and counts it."""
    c = tiny_config(batch_size=2)
    good = random_batch(0, 2, c.data.roi_large, c.data.crop_size)
    bad = dict(good, image=np.full_like(good["image"], np.nan))
    mesh = make_mesh(2)
    task = PretrainTask(c)
    state = create_state(task, mesh)
    before = jax.device_get(state)
    step = compile_step(task, mesh)
    state, m = step(state, to_global(bad, batch_sharding(mesh)))
    after = jax.device_get(state)
    assert float(m["skipped"]) == 1.0 and int(after["step"]) == 1
    for a, b in zip(jax.tree.leaves(before["params"]), jax.tree.leaves(after["params"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before["teacher"]), jax.tree.leaves(after["teacher"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before["queue"], after["queue"])
    state, m = step(state, to_global(good, batch_sharding(mesh)))
    assert float(m["skipped"]) == 0.0 and int(state["step"]) == 2
