"""S2DC on MRI-6k (OASIS3 T1/T2/FLAIR/MRA; list with --min-side 64), docs/method.md sections 1-4: 4 GPUs, 1 volume each.

    python launch/make_datalist.py --root /data/mri6k --out mri6k.json --min-side 64
    python launch/pretrain.py --config=configs/mri6k.py --workdir=runs/mri6k \
        --config.data.datalist=mri6k.json

Dual-softmax matching, queue of 200 x batch keys, 100k steps.
On a different number of devices set --config.batch_size (a multiple of the device count)
and --config.ssl.queue_size accordingly. ``--config=configs/mri6k.py:tiny`` shrinks it for a smoke run.
"""
from s2dc_jax.tasks.pretrain_config import preset


def get_config(arg=None):
    return preset(modality="mri", match="dual_softmax", batch_size=4, queue_num=200, arg=arg)
