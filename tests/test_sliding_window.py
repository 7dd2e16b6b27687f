"""Sliding-window inference against MONAI's sliding_window_inference with the same predictor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference as monai_swi

from s2dc_jax.tasks import sliding_window as sw

_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(3, 3, 3, 2, 3)).astype(np.float32) * 0.3  # conv kernel [kx, ky, kz, Cin, K]
_B = _RNG.normal(size=(3,)).astype(np.float32)


def _jax_predictor(x):
    # f32[N, rx, ry, rz, 2] -> f32[N, rx, ry, rz, 3]; zero-padded conv so window borders matter
    y = jax.lax.conv_general_dilated(x, jnp.asarray(_W), (1, 1, 1), "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return jnp.tanh(y + _B)


def _torch_predictor(x):
    w = torch.from_numpy(np.ascontiguousarray(np.transpose(_W, (4, 3, 0, 1, 2))))  # [K, Cin, kx, ky, kz]
    return torch.tanh(torch.nn.functional.conv3d(x, w, torch.from_numpy(_B), padding=1))


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("shape,roi,swb", [
    ((2, 37, 30, 20, 2), (16, 16, 12), 3),   # several windows, last ones pulled back inside
    ((1, 10, 24, 9, 2), (16, 16, 16), 4),    # sides smaller than the window: padded, cropped back
    ((1, 16, 20, 16, 2), (16, 16, 16), 1),   # window equals a side
])
def test_matches_monai(mode, shape, roi, swb):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    fn = jax.jit(lambda v: sw.sliding_window_inference(v, roi, _jax_predictor, sw_batch_size=swb,
                                                       overlap=0.75, mode=mode))
    ours = np.asarray(fn(jnp.asarray(x)))
    with torch.no_grad():
        ref = monai_swi(torch.from_numpy(np.moveaxis(x, -1, 1)), roi, swb, _torch_predictor,
                        overlap=0.75, mode=mode)
    ref = np.moveaxis(ref.numpy(), 1, -1)
    assert ours.shape == ref.shape == shape[:-1] + (3,)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_blending_weight_changes_result_and_window_grid():
    # Guards against a blend that ignores its weights: gaussian and constant differ here.
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 30, 30, 20, 2)).astype(np.float32))
    a = sw.sliding_window_inference(x, (16, 16, 16), _jax_predictor, overlap=0.75, mode="constant")
    g = sw.sliding_window_inference(x, (16, 16, 16), _jax_predictor, overlap=0.75, mode="gaussian")
    assert float(jnp.max(jnp.abs(a - g))) > 1e-3
    starts = sw.window_starts((30, 30, 20), (16, 16, 16), 0.75)
    assert sorted(set(starts[:, 0].tolist())) == [0, 4, 8, 12, 14]
    assert sorted(set(starts[:, 2].tolist())) == [0, 4]


def test_bad_arguments_fail_clearly():
    x = jnp.zeros((1, 8, 8, 8, 1))
    with pytest.raises(ValueError, match="mode"):
        sw.sliding_window_inference(x, (8, 8, 8), lambda v: v, mode="linear")
    with pytest.raises(ValueError, match="overlap"):
        sw.sliding_window_inference(x, (8, 8, 8), lambda v: v, overlap=1.0)
    with pytest.raises(ValueError, match="inputs"):
        sw.sliding_window_inference(jnp.zeros((8, 8, 8, 1)), (8, 8, 8), lambda v: v)
