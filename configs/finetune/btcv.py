"""BTCV multi-organ CT segmentation: 13 organs + background (docs/method.md section 5).

Setup: SwinUNETR BTCV recipe: 1.5 x 1.5 x 2.0 mm, HU window [-175, 250] -> [0, 1], 96^3 crops, 3000 epochs, AdamW 1e-4 / 1e-5.

    python launch/finetune.py --config=configs/finetune/btcv.py --workdir=runs/btcv \
        --config.data.datalist=/data/btcv/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: MONAI's BTCV layout (imagesTr/, labelsTr/, dataset_0.json with its own training/validation split):

    python launch/make_datalist.py --from btcv /data/btcv --out /data/btcv/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """btcv fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("segmentation")
    c.model.in_channels, c.model.out_channels = 1, 14
    c.data.intensity = "window"
    c.data.spacing = (1.5, 1.5, 2.0)
    c.data.a_min, c.data.a_max = -175.0, 250.0
    c.epochs = 3000
    return variant(c, arg)
