"""bench/profile.py: FLOPs read from the compiled HLO, time split among overlapping ops, ops named by part."""
import re

import jax
import jax.numpy as jnp
import pytest

from s2dc_jax.bench import profile


def test_hlo_flops_of_dots_and_convolutions_equal_xla_cost_analysis():
    def f(a, b, x, w, w2):
        d = jnp.einsum("bij,bjk->bik", a, b)
        dn = ("NDHWC", "DHWIO", "NDHWC")
        c = jax.lax.conv_general_dilated(x, w, (1, 1, 1), "VALID", dimension_numbers=dn)
        g = jax.lax.conv_general_dilated(x, w2, (2, 2, 2), "VALID", dimension_numbers=dn, feature_group_count=2)
        return d, c, g

    args = (jnp.ones((3, 16, 8)), jnp.ones((3, 8, 5)), jnp.ones((2, 8, 8, 8, 4)), jnp.ones((3, 3, 3, 4, 6)),
            jnp.ones((2, 2, 2, 2, 6)))
    compiled = jax.jit(f).lower(*args).compile()
    text = compiled.as_text()
    instrs, comps = profile.parse_hlo(text)
    entry = re.search(r"ENTRY %([\w.\-]+)", text).group(1)
    ours = sum(profile.flops_of(n, instrs, comps) for n in comps[entry])
    by_hand = 2 * 3 * 16 * 5 * 8 + 2 * 2 * 6**3 * 6 * 27 * 4 + 2 * 2 * 4**3 * 6 * 8 * 2
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert ours == by_hand == cost["flops"]


def test_overlapping_ops_share_the_wall_clock():
    ms = 1e6  # ns
    shares = profile.wall_shares([("a", 0, 10 * ms), ("b", 5 * ms, 15 * ms), ("a", 20 * ms, 21 * ms)])
    assert shares["a"][0] == pytest.approx(5e-3 + 2.5e-3 + 1e-3) and shares["a"][1] == 2
    assert shares["b"][0] == pytest.approx(2.5e-3 + 5e-3) and shares["b"][1] == 1
    assert sum(s for s, _ in shares.values()) == pytest.approx(16e-3)  # the time any op was in flight


@pytest.mark.parametrize("op_name,part,kind", [
    ("jit(step)/transpose(jvp(student))/SwinTransformer3D/layers2/blocks_1/attn/qkv/dot_general",
     "stage 2: window attention", "backward"),
    ("jit(step)/jvp(teacher)/while/body/closed_call/checkpoint/SwinTransformer3D/layers1/blocks_0/transpose",
     "stage 1: norms, shift, window partition", "teacher"),
    ("jit(step)/jvp(student)/SwinTransformer3D/layers3c/layer/conv1/conv_general_dilated",
     "stage 3: v2 conv block", "forward"),
    ("jit(step)/jvp(student)/SwinTransformer3D/layers4/downsample/reduction/dot_general",
     "stage 4: patch merging", "forward"),
    ("jit(step)/jvp(student)/SwinTransformer3D/patch_embed/proj/conv_general_dilated", "patch embedding", "forward"),
    ("jit(step)/jvp(views)/vmap()/gather", "views (affine resampling)", "forward"),
    ("jit(step)/transpose(jvp(matching))/while/body/logsumexp",
     "patch matching (Sinkhorn / dual softmax, losses)", "backward"),
    ("jit(step)/optimizer/mul", "optimiser (AdamW)", "forward"),
    ("jit(step)/jvp(teacher)/ProjectionHead/layer1/dot_general", "projection heads", "teacher"),
    ("jit(step)/is_finite", "other (guard, queue, metrics, copies)", "forward"),
])
def test_ops_are_named_by_part_and_pass(op_name, part, kind):
    assert profile.part_of(op_name) == (part, kind)


@pytest.mark.slow
def test_profile_of_a_tiny_step_names_nearly_all_its_time():
    from test_train import tiny_config

    from s2dc_jax.bench.pretrain import time_jax

    res = time_jax(tiny_config(batch_size=1, num_devices=1), steps=1, warmup=1, profile=1)
    prof = res["profile"]
    rows = {r["part"]: r for r in prof["rows"]}
    attn = rows["stage 1: window attention"]
    assert attn["forward_s"] > 0 and attn["backward_s"] > 0 and attn["teacher_s"] > 0 and attn["gflop"] > 0
    assert rows["optimiser (AdamW)"]["total_s"] > 0 and rows["views (affine resampling)"]["total_s"] > 0
    other = rows.get("other (guard, queue, metrics, copies)", {"total_s": 0.0})["total_s"]
    assert other < 0.15 * prof["op_s"], prof
    # ops run only inside the step: their time cannot exceed it by more than the timing noise
    assert 0.3 * res["step_s"] < prof["op_s"] < 2.0 * res["step_s"]
    # the HLO's dots and convolutions are most of XLA's own count of the step's FLOPs
    gflop = sum(r["gflop"] for r in prof["rows"])
    assert 0.6 * res["flops_per_device"] / 1e9 < gflop < 1.05 * res["flops_per_device"] / 1e9
    table = profile.format_table(prof, res["step_s"], peak_tflops=0.157)
    assert "| stage 1: window attention |" in table and "% of peak" in table and "**all ops**" in table
