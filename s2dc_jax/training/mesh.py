"""The device mesh of a run and the way host data becomes global arrays on it."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s2dc_jax.tasks.base import AXIS


def make_mesh(num_devices: int = 0) -> Mesh:
    """1-D mesh, axis "data", over the first ``num_devices`` devices (0: all devices of every process)."""
    devs = jax.devices()
    n = int(num_devices) or len(devs)
    if n < 0 or n > len(devs):
        raise ValueError(f"config.num_devices: {num_devices} is not in [0, {len(devs)}] (the devices there are)")
    if jax.process_count() > 1 and n != len(devs):
        raise ValueError(f"config.num_devices: must be 0 or all {len(devs)} devices when running "
                         f"{jax.process_count()} processes, got {num_devices}")
    return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devs[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """The state's sharding: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batches' sharding: split on their first axis over "data"."""
    return NamedSharding(mesh, P(AXIS))


def to_global(batch: dict, sharding: NamedSharding) -> dict:
    """This process's rows of a global batch (numpy) -> global arrays; the copies to the devices are asynchronous."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
