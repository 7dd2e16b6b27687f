"""BraTS 2021 glioma segmentation from 4 MRI channels (T1, T1ce, T2, FLAIR).

Setup: 1 mm isotropic, z-score over brain voxels per channel, 96^3 crops, 300 epochs. Labels 0/1/2/4 (4 remapped to 3). Pretrained with 1 channel: the first layer is skipped (init.skip).

    python launch/finetune.py --config=configs/finetune/brats21.py --workdir=runs/brats21 \
        --config.data.datalist=/data/brats21/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: BraTS case folders, 2021 names (<case>_t1/_t1ce/_t2/_flair/_seg) or 2023 names
(-t1n/-t1c/-t2w/-t2f/-seg); the datalist lists the 4 channel files of each case in the
order this config expects, t1, t1ce, t2, flair (2023: t1n, t1c, t2w, t2f), and keeps the
label values as stored: 2021's 0/1/2/4 become classes 0 background, 1 NCR, 2 ED, 3 ET
through data.label_map (4 -> 3); 2023's 0/1/2/3 already are those classes.

    python launch/make_datalist.py --from brats /data/BraTS2021_Training_Data --out /data/brats21/datalist.json

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """brats21 fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("segmentation")
    c.model.in_channels, c.model.out_channels = 4, 4
    c.data.intensity = "zscore_nonzero"
    c.data.spacing = (1.0, 1.0, 1.0)
    c.data.label_map = ((4, 3),)
    c.data.val_fraction = 0.2
    c.epochs = 300
    # Channel count differs from pretraining: the input layers start fresh.
    c.init.skip = (r"swinViT/patch_embed/proj/", r"^encoder1/layer/conv[13]/")
    return variant(c, arg)
