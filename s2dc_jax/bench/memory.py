"""XLA's memory and cost analysis of the real pretraining step, compiled and not run.

``launch/benchmark.py memory --config configs/ct1k.py`` compiles the function that
``launch/pretrain.py`` runs (``training.loop.compile_step`` of a ``PretrainTask``: shard_map,
the non-finite guard, the donated state) for one device with the config's shapes and a
per-device batch, on the backend at hand, and reads
``compiled.memory_analysis()`` (arguments, outputs, temporaries, peak) and the FLOPs.

XLA's cost analysis counts the body of a loop once, not once per iteration, so the FLOPs are
read from the step lowered with every crop in one group and no recomputation (the model's
FLOPs per step; what MFU is measured against). ``parts`` compiles the step's pieces alone
(the student pass with gradients, the teacher passes, heads and matching) to show what is
big; ``buffers`` lists the largest values of the optimised module.
"""
from __future__ import annotations

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np

from s2dc_jax.training.loop import memory_bytes

GIB = 2**30


def per_device_config(config, per_device_batch: int):
    """A copy of ``config`` for one device holding ``per_device_batch`` volumes."""
    c = copy.deepcopy(config)
    c.batch_size = int(per_device_batch)
    c.num_devices = 1
    return c


def abstract_batch(config, mesh) -> dict:
    """ShapeDtypeStructs of one global batch (image and view parameters) with the batch sharding."""
    from s2dc_jax.data.view_params import sample_view_params
    from s2dc_jax.training.mesh import batch_sharding

    x, y, z = config.data.roi_large
    crops = (x // config.data.crop_size) * (y // config.data.crop_size)
    one = sample_view_params(np.random.default_rng(0), crops)
    b = config.batch_size
    shapes = {k: jax.ShapeDtypeStruct((b, *np.shape(v)), np.asarray(v).dtype) for k, v in one.items()}
    shapes["image"] = jax.ShapeDtypeStruct((b, x, y, z, config.model.in_channels), jnp.float32)
    sharding = batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for k, s in shapes.items()}


def lower_step(config):
    """The pretraining step of ``config`` (one device) lowered with abstract state and batch."""
    from s2dc_jax.tasks.pretrain import PretrainTask
    from s2dc_jax.training.loop import abstract_state, compile_step
    from s2dc_jax.training.mesh import make_mesh

    mesh = make_mesh(1)
    task = PretrainTask(config)
    task.mesh = mesh
    return compile_step(task, mesh).lower(abstract_state(task, mesh), abstract_batch(config, mesh))


def _cost(obj) -> dict:
    cost = obj.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float((cost or {}).get("flops", 0.0)),
            "bytes_accessed": float((cost or {}).get("bytes accessed", 0.0))}


def model_flops(config) -> float:
    """FLOPs of one step with every crop in one group and no recomputation (from the lowered HLO)."""
    c = copy.deepcopy(config)
    c.model.crop_group = 10**6
    c.model.remat_policy = "none"
    return _cost(lower_step(c))["flops"]


def analyse(config, per_device_batch: int = 1) -> dict:
    """Memory (bytes) and FLOPs of the compiled step of ``config`` at ``per_device_batch``."""
    from s2dc_jax.models.encode import crops_per_group

    c = per_device_config(config, per_device_batch)
    compiled = lower_step(c).compile()
    x, y, _ = c.data.roi_large
    n = (x // c.data.crop_size) * (y // c.data.crop_size) * c.batch_size
    res = {"memory": memory_bytes(compiled), **_cost(compiled), "model_flops": model_flops(c),
           "backend": jax.default_backend(), "per_device_batch": c.batch_size,
           "crop_group": crops_per_group(c.model, c.data.crop_size, n), "student_crops": n}
    res["compiled"] = compiled
    return res


def parts(config, per_device_batch: int = 1) -> list[tuple[str, dict]]:
    """(name, memory) of the step's pieces compiled alone: student pass + gradient, teacher passes, heads."""
    from s2dc_jax import objectives
    from s2dc_jax.tasks.base import build_encoder, make_optimizer
    from s2dc_jax.tasks.pretrain import init_state
    from s2dc_jax.tasks.pretrain_step import make_encode
    from s2dc_jax.training.mesh import make_mesh

    c = per_device_config(config, per_device_batch)
    encoder = build_encoder(c.model)
    tx, _ = make_optimizer(c.optim, c.total_steps)
    state = jax.eval_shape(lambda k: init_state(c, encoder, tx, k), jax.random.PRNGKey(0))
    cs = c.data.crop_size
    x, y, _ = c.data.roi_large
    n = (x // cs) * (y // cs) * c.batch_size
    crop = lambda k: jax.ShapeDtypeStruct((k, cs, cs, cs, c.model.in_channels), jnp.float32)
    encode = make_encode(c, encoder)
    t = cs // (c.model.patch_size * 16)
    width = c.model.feature_size * 16

    def student(p, v):
        return jax.value_and_grad(lambda q: jnp.sum(encode(q, v)))(p)

    def teacher(p, v):
        return encode(p, v)

    def heads_and_matching(params, teacher_p, s_feat, t_feat, batch, queue):
        table = {n: s_feat, 2 * n + c.batch_size: t_feat}

        def fake_encode(_, v):
            return table[v.shape[0]]

        def loss(p):
            return objectives.s2dc_loss(p, teacher_p, fake_encode, batch, queue, c.ssl, crop_size=cs)[0]
        return jax.value_and_grad(loss)(params)

    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in abstract_batch(c, make_mesh(1)).items()}
    feat = lambda k: jax.ShapeDtypeStruct((k, t, t, t, width), jnp.float32)
    pieces = [
        (f"student pass + gradient ({n} crops)", jax.jit(student), (state["params"]["encoder"], crop(n))),
        (f"teacher passes ({2 * n + c.batch_size} crops, no gradient)", jax.jit(teacher),
         (state["params"]["encoder"], crop(2 * n + c.batch_size))),
        ("heads, matching and losses + gradient", jax.jit(heads_and_matching),
         (state["params"], state["teacher"], feat(n), feat(2 * n + c.batch_size), batch, state["queue"])),
    ]
    return [(name, memory_bytes(fn.lower(*args).compile())) for name, fn, args in pieces]


_SHAPE = re.compile(r"= (f32|bf16|f16|s32|u32|pred|s8|u8)\[([0-9,]*)\]")
_WIDTH = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1}


def largest_values(compiled, k: int = 10) -> list[tuple[int, str]]:
    """The ``k`` largest array values (bytes, "dtype[shape]") in the optimised module's text.

    Not all of them are alive at the same time; they say which tensors dominate.
    """
    seen = {}
    for dtype, dims in _SHAPE.findall(compiled.as_text() or ""):
        shape = [int(d) for d in dims.split(",") if d]
        size = int(np.prod(shape, dtype=np.int64)) * _WIDTH[dtype]
        seen[f"{dtype}[{dims}]"] = size
    return sorted(((s, name) for name, s in seen.items()), reverse=True)[:k]


def format_report(name: str, res: dict) -> str:
    """One table row block for ``res`` of :func:`analyse`."""
    m = res["memory"]
    if not m:
        return f"{name}: memory analysis not available on backend {res['backend']}"
    g = lambda b: f"{b / GIB:.2f}"
    return (f"| {name} | {res['per_device_batch']} | {res['crop_group']} | {g(m['argument'])} | {g(m['output'])} | "
            f"{g(m['temp'])} | **{g(m['peak'])}** | {res['model_flops'] / 1e12:.2f} |")


TABLE_HEAD = ("| variant | volumes / device | crops / group | arguments GiB | outputs GiB | temporaries GiB | "
              "peak GiB | TFLOP / step |\n|---|---|---|---|---|---|---|---|")
