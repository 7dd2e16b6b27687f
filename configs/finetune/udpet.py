"""UDPET low-dose -> full-dose PET reconstruction.

Setup: native spacing, min-max scaling of input and target, 96^3 crops, L1, 300 epochs; PSNR, SSIM, NRMSE.

    python launch/finetune.py --config=configs/finetune/udpet.py --workdir=runs/udpet \
        --config.data.datalist=/data/udpet/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: no --from layout fits: write a datalist of {"image": low-dose, "target": full-dose} pairs,
then check it (same grid, no NaN, no constant volume): python launch/make_datalist.py --check LIST.json --task reconstruction

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """udpet fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("reconstruction")
    c.model.in_channels, c.model.out_channels = 1, 1
    c.data.intensity, c.data.target_intensity = "minmax", "minmax"
    c.data.val_fraction = 0.2
    c.epochs = 300
    return variant(c, arg)
