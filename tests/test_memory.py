"""The memory-bounded step (models/encode.py) computes what the one-call step computes; the memory benchmark."""
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import random_batch, tiny_config

from s2dc_jax import objectives
from s2dc_jax.bench import memory
from s2dc_jax.models.encode import crop_activation_bytes, crops_per_group, grouped
from s2dc_jax.tasks import pretrain_config as config_lib
from s2dc_jax.tasks.pretrain import PretrainTask
from s2dc_jax.tasks.pretrain_step import make_encode

REPO = Path(__file__).resolve().parents[1]
PLAIN = {"model.crop_group": 1000, "model.remat_policy": "none"}


def loss_and_grads(config, batch):
    """S2DC loss and its gradient w.r.t. the student, one device, the step's own encode."""
    task = PretrainTask(config)
    state = jax.jit(task.init_state)(jax.random.PRNGKey(0))
    encode = make_encode(config, task.encoder)

    def loss(params):
        return objectives.s2dc_loss(params, state["teacher"], encode, batch, state["queue"], config.ssl,
                                    crop_size=config.data.crop_size)[0]
    return jax.jit(jax.value_and_grad(loss))(state["params"])


def rel(a, b):
    da = np.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    return da / np.sqrt(sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def plain():
    c = tiny_config(batch_size=2, **PLAIN)
    batch = {k: jnp.asarray(v) for k, v in random_batch(0, 2, c.data.roi_large, c.data.crop_size).items()}
    return c, batch, loss_and_grads(c, batch)


@pytest.mark.xdist_group("plain_step")  # one worker computes the `plain` fixture (README: --dist loadgroup)
def test_grouped_step_equals_plain_step(plain):
    """fp32, one crop per group, each recomputed: loss within 1e-5, gradients within 1e-5 relative norm.

    Groups of 2 on 8 and 1 devices: test_train.py; the groups' order: below."""
    _, batch, (loss0, grads0) = plain
    cg = tiny_config(batch_size=2, **{"model.crop_group": 1, "model.remat_policy": "full"})
    loss, grads = loss_and_grads(cg, batch)
    assert abs(float(loss) - float(loss0)) <= 1e-5
    assert rel(grads, grads0) <= 1e-5


@pytest.mark.slow
@pytest.mark.xdist_group("plain_step")
def test_bfloat16_grouped_step_is_close_to_the_plain_fp32_step(plain):
    """bf16 compute, one crop per group, against fp32 with all crops at once: loss within 1% (relative;
    0.07% measured on the CPU), gradients within 0.3 relative norm (0.17 measured: bf16 rounding of
    the activations; a wrong reduction or a lost group is off by O(1))."""
    _, batch, (loss32, grads32) = plain
    loss, grads = loss_and_grads(tiny_config(batch_size=2, **{"model.dtype": "bfloat16", "model.crop_group": 1}),
                                 batch)
    assert abs(float(loss) - float(loss32)) <= 1e-2 * abs(float(loss32))
    assert rel(grads, grads32) <= 0.3


def test_group_size_choice():
    paper = config_lib.pretrain_config()
    tiny = tiny_config()
    assert crops_per_group(paper.model, 96, 16) == 1 and crops_per_group(paper.model, 96, 33) == 1
    assert crops_per_group(tiny.model, 32, 4) == 4 and crops_per_group(tiny.model, 32, 9) == 9
    tiny.model.crop_group = 4
    assert crops_per_group(tiny.model, 32, 9) == 3  # the largest divisor that is not above the setting
    # the estimate tracks the model: bf16 halves it, a wider model costs more
    paper.model.dtype = "bfloat16"
    assert crops_per_group(paper.model, 96, 16) == 1  # bf16 too: 2 per group measured 12.2 GiB, over 12
    assert crop_activation_bytes(paper.model, 96) * 2 == crop_activation_bytes(config_lib.pretrain_config().model, 96)
    with pytest.raises(ValueError, match="config.model.remat_policy"):
        config_lib.validate(tiny_config(**{"model.remat_policy": "some"}), device_count=1)
    with pytest.raises(ValueError, match="config.model.crop_group"):
        config_lib.validate(tiny_config(**{"model.crop_group": -1}), device_count=1)


@pytest.mark.parametrize("group,policy,remat", [(2, "auto", True), (6, "auto", False), (2, "dots", True),
                                                (2, "none", False)])
def test_policy_decides_what_is_recomputed(group, policy, remat):
    """'auto': groups are rematerialised (the memory bound), one group is not (no extra work)."""
    model = tiny_config(**{"model.crop_group": group, "model.remat_policy": policy}).model
    encode = grouped(lambda p, x: x * p, model=model, crop_size=32)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(encode(p, x))))(2.0, jnp.ones((6, 2))))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == remat


def test_grouped_encode_handles_pytrees_and_keeps_order():
    fn = lambda p, x: {"a": x * p, "b": jnp.sum(x, axis=(1, 2))}
    model = tiny_config(**{"model.crop_group": 2}).model
    x = jnp.arange(6 * 2 * 2, dtype=jnp.float32).reshape(6, 2, 2)
    out = grouped(fn, model=model, crop_size=32)(2.0, x)
    ref = fn(2.0, x)
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])


@pytest.mark.slow
def test_memory_benchmark_sees_the_grouping(capsys, tmp_path):
    """Compiled, not run: one crop per group needs fewer temporaries than all crops at once."""
    one = memory.analyse(tiny_config(**{"model.crop_group": 1, "model.use_v2": True, "model.window_size": 7}), 1)  # ct1k.py:tiny, grouped
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "launch" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the tiny preset's auto grouping: all 4 crops in one group (the plain step)
    assert bench.main(["memory", "--config", "configs/ct1k.py:tiny", "--parts", "--buffers", "3",
                       "--json", str(tmp_path / "m.json")]) == 0
    all_ = json.loads((tmp_path / "m.json").read_text())
    assert one["memory"]["temp"] < 0.7 * all_["memory"]["temp"]
    # the FLOPs are the model's, whatever the grouping (loop bodies are not counted once)
    assert one["model_flops"] == pytest.approx(all_["model_flops"], rel=1e-6) and one["model_flops"] > 1e8
    assert one["crop_group"] == 1 and all_["crop_group"] == 4
    out = capsys.readouterr().out
    assert "| configs/ct1k.py:tiny | 1 | 4 |" in out and "student pass + gradient (4 crops)" in out
    assert "largest values" in out and "MiB  f32[" in out
