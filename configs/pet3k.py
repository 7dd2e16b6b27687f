"""S2DC on PET-3k (UDPET + ADNI), docs/method.md sections 1-4: 4 GPUs, 1 volume each.

    python launch/make_datalist.py --root /data/pet3k --out pet3k.json
    python launch/pretrain.py --config=configs/pet3k.py --workdir=runs/pet3k \
        --config.data.datalist=pet3k.json

Dual-softmax matching, queue of 200 x batch keys, 100k steps.
On a different number of devices set --config.batch_size (a multiple of the device count)
and --config.ssl.queue_size accordingly. ``--config=configs/pet3k.py:tiny`` shrinks it for a smoke run.
"""
from s2dc_jax.tasks.pretrain_config import preset


def get_config(arg=None):
    return preset(modality="pet", match="dual_softmax", batch_size=4, queue_num=200, arg=arg)
