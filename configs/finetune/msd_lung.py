"""MSD Task06 Lung: background, lung tumour (CT).

Setup: 1.5 x 1.5 x 2.0 mm, lung HU window [-1000, 1000], 96^3 crops, 1000 epochs, 2:8 split.

    python launch/finetune.py --config=configs/finetune/msd_lung.py --workdir=runs/msd_lung \
        --config.data.datalist=/data/msd_lung/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: the MSD Task06_Lung folder as downloaded (no split of its own: a seeded 0.2 validation split):

    python launch/make_datalist.py --from msd /data/Task06_Lung --out /data/msd_lung/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """msd_lung fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("segmentation")
    c.model.in_channels, c.model.out_channels = 1, 2
    c.data.intensity = "window"
    c.data.spacing = (1.5, 1.5, 2.0)
    c.data.a_min, c.data.a_max = -1000.0, 1000.0
    c.data.val_fraction = 0.2
    c.epochs = 1000
    return variant(c, arg)
