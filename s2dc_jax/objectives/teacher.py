"""EMA teacher and the FIFO queue of global keys (docs/method.md sections 2 and 3.3)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from s2dc_jax.objectives.heads import l2_normalize


EMA_SCHEDULES = ("constant", "cosine")


def ema_momentum(step, base: float, schedule: str, total_steps: int) -> jax.Array:
    """The teacher's momentum at ``step`` (0-based): ``base`` throughout, or rising to 1 along a half cosine.

    'cosine' is BYOL's and DINO's schedule, ``1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2``:
    the teacher follows the student closely at first and freezes at the end, so a short run's
    teacher leaves its random init instead of staying near it (0.999 moves 14% of the way in 150 steps).
    """
    if schedule not in EMA_SCHEDULES:
        raise ValueError(f"ssl.ema_schedule must be one of {EMA_SCHEDULES}, got {schedule!r}")
    base = jnp.asarray(base, jnp.float32)
    if schedule == "constant":
        return base
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


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
