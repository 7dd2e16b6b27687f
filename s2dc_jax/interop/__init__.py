"""s2dc_jax.interop: weights to and from PyTorch/MONAI, with a report of every key."""
from s2dc_jax.interop.files import is_flax_layout, load_params, read_state_dict, save_params, write_state_dict
from s2dc_jax.interop.mapping import (
    LoadReport,
    flatten_params,
    from_monai,
    infer_config,
    to_monai,
    unflatten_params,
)

__all__ = [
    "LoadReport",
    "flatten_params",
    "from_monai",
    "infer_config",
    "is_flax_layout",
    "load_params",
    "read_state_dict",
    "save_params",
    "to_monai",
    "unflatten_params",
    "write_state_dict",
]
