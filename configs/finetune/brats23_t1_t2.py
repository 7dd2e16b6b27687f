"""BraTS 2023 image-to-image translation: T1 -> T2.

Setup: 1 mm, min-max scaling of input and target to [0, 1], 96^3 crops, L1, 300 epochs; PSNR/SSIM on the whole volume.

    python launch/finetune.py --config=configs/finetune/brats23_t1_t2.py --workdir=runs/brats23_t1_t2 \
        --config.data.datalist=/data/brats23_t1_t2/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: BraTS 2023 case folders; each entry's image is the T1 (-t1n) file and its target the T2 (-t2w) file:

    python launch/make_datalist.py --from brats /data/BraTS2023-GLI --channels t1 --target t2 \
        --out /data/brats23_t1_t2/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """brats23_t1_t2 fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("translation")
    c.model.in_channels, c.model.out_channels = 1, 1
    c.data.intensity, c.data.target_intensity = "minmax", "minmax"
    c.data.spacing = (1.0, 1.0, 1.0)
    c.data.val_fraction = 0.2
    c.epochs = 300
    return variant(c, arg)
