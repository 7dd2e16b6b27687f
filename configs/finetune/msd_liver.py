"""MSD Task03 Liver: background, liver, tumour (CT).

Setup: 1.5 x 1.5 x 2.0 mm, abdominal HU window [-175, 250], 96^3 crops, 1000 epochs, 2:8 split of the training list.

    python launch/finetune.py --config=configs/finetune/msd_liver.py --workdir=runs/msd_liver \
        --config.data.datalist=/data/msd_liver/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: the MSD Task03_Liver folder as downloaded (no split of its own: a seeded 0.2 validation split):

    python launch/make_datalist.py --from msd /data/Task03_Liver --out /data/msd_liver/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """msd_liver fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("segmentation")
    c.model.in_channels, c.model.out_channels = 1, 3
    c.data.intensity = "window"
    c.data.spacing = (1.5, 1.5, 2.0)
    c.data.a_min, c.data.a_max = -175.0, 250.0
    c.data.val_fraction = 0.2
    c.epochs = 1000
    return variant(c, arg)
