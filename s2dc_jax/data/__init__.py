"""s2dc_jax.data: NIfTI I/O, datalists, modality presets, phantoms and the grain pretraining pipeline.

Per-volume functions are pure numpy (``presets``) so fine-tuning can crop images and
labels with the same code; ``make_pretrain_dataset`` wires them into grain.
"""
from s2dc_jax.data.datalist import (check_datalist, cache_uncompressed, datalist_paths, make_datalist,
                                    read_datalist, write_datalist)
from s2dc_jax.data.io import DataError, VolumeInfo, load_volume, open_raw, read_header, save_volume
from s2dc_jax.data.phantoms import CLASS_NAMES, LABEL_NAMES, make_phantom, write_phantom_dataset
from s2dc_jax.data.pipeline import (BadRecordError, default_data_config, iterator_stats,
                                    make_pretrain_dataset, num_crops, view_ranges)
from s2dc_jax.data.presets import (MODALITIES, PRESETS, foreground_box, get_preset,
                                   normalize_intensity, pad_symmetric, pretrain_volume, random_box,
                                   resize)
from s2dc_jax.data.view_params import ViewRanges, sample_view_params

__all__ = [
    "BadRecordError", "CLASS_NAMES", "DataError", "LABEL_NAMES", "MODALITIES", "PRESETS",
    "VolumeInfo", "ViewRanges", "cache_uncompressed", "check_datalist", "datalist_paths", "default_data_config",
    "foreground_box", "get_preset", "iterator_stats", "load_volume", "make_datalist",
    "make_phantom", "make_pretrain_dataset", "normalize_intensity", "num_crops", "open_raw",
    "pad_symmetric", "pretrain_volume", "random_box", "read_datalist", "read_header", "resize",
    "sample_view_params", "save_volume", "view_ranges", "write_datalist", "write_phantom_dataset",
]
