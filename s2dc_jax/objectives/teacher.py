"""EMA teacher and the FIFO queue of global keys (docs/method.md sections 2 and 3.3)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from s2dc_jax.objectives.heads import l2_normalize


def ema_update(teacher, student, momentum: float):
    """``momentum * teacher + (1 - momentum) * student``, leaf by leaf over matching pytrees."""
    return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * jax.lax.stop_gradient(s),
                        teacher, student)


def init_queue(rng: jax.Array, size: int, dim: int) -> jax.Array:
    """``f32[size, dim]`` of L2-normalised Gaussian rows, as the reference initialises its queue."""
    if size < 1 or dim < 1:
        raise ValueError(f"ssl.queue_size and ssl.head_dim must be >= 1, got {size} and {dim}")
    return l2_normalize(jax.random.normal(rng, (size, dim), jnp.float32))


def queue_update(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Enqueue ``keys f32[B, D]`` at ``ptr`` into ``queue f32[K, D]``, wrapping; returns ``(queue, ptr)``.

    Works for any K and B (the reference asserts ``K % B == 0``, which fails on 4 or 8
    GPUs): keys land at ``(ptr + i) % K``; when ``B > K`` only the last K survive, as in
    a FIFO fed one key at a time. The new pointer is ``(ptr + B) % K``.
    """
    size = queue.shape[0]
    num = keys.shape[0]
    if keys.shape[1:] != queue.shape[1:]:
        raise ValueError(f"queue keys have shape {keys.shape}, the queue {queue.shape}: feature sizes differ")
    ptr = jnp.asarray(ptr, jnp.int32).reshape(())
    start = num - min(num, size)          # static: earlier keys would be overwritten anyway
    idx = (ptr + start + jnp.arange(num - start, dtype=jnp.int32)) % size
    queue = queue.at[idx].set(keys[start:].astype(queue.dtype), unique_indices=True)
    return queue, (ptr + num) % size
