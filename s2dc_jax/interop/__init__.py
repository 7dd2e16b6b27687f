"""s2dc_jax.interop: weights to and from PyTorch/MONAI, with a report of every key."""
from s2dc_jax.interop.files import (
    Checkpoint,
    is_flax_layout,
    load_params,
    read_checkpoint,
    read_metadata,
    read_state_dict,
    save_params,
    write_state_dict,
)
from s2dc_jax.interop.mapping import (
    SOURCES,
    LoadReport,
    flatten_params,
    from_monai,
    infer_config,
    to_monai,
    unflatten_params,
)
from s2dc_jax.interop.merging import (
    MERGING_HINT,
    export_metadata,
    legacy_export_warning,
    merging_from_metadata,
    monai_constructor_line,
    patch_monai_merging,
    resolve_merging,
)

__all__ = [
    "MERGING_HINT",
    "SOURCES",
    "Checkpoint",
    "LoadReport",
    "export_metadata",
    "flatten_params",
    "from_monai",
    "infer_config",
    "is_flax_layout",
    "legacy_export_warning",
    "load_params",
    "merging_from_metadata",
    "monai_constructor_line",
    "patch_monai_merging",
    "read_checkpoint",
    "read_metadata",
    "read_state_dict",
    "resolve_merging",
    "save_params",
    "to_monai",
    "unflatten_params",
    "write_state_dict",
]
