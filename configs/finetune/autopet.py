"""AutoPET whole-body FDG-PET lesion segmentation (PET/SUV input).

Setup: 2 x 2 x 3 mm, z-score over the volume (SUV), 96^3 crops, 400 epochs, 2:8 split.

    python launch/finetune.py --config=configs/finetune/autopet.py --workdir=runs/autopet \
        --config.data.datalist=/data/autopet/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: AutoPET as an nnU-Net v2 raw dataset (CT as channel 0000, SUV PET as 0001; see its
dataset.json channel_names): this config reads the PET channel only (labels 0/1):

    python launch/make_datalist.py --from nnunet /data/nnUNet_raw/Dataset221_AutoPETII_2023 \
        --channels 1 --out /data/autopet/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """autopet fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("segmentation")
    c.model.in_channels, c.model.out_channels = 1, 2
    c.data.intensity = "zscore"
    c.data.spacing = (2.0, 2.0, 3.0)
    c.data.val_fraction = 0.2
    c.epochs = 400
    return variant(c, arg)
