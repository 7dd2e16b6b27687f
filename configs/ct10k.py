"""S2DC on CT-10k (docs/method.md section 4's 8 CT sets), docs/method.md sections 1-4: 4 GPUs, 1 volume each.

    python launch/make_datalist.py --root /data/ct10k --out ct10k.json
    python launch/pretrain.py --config=configs/ct10k.py --workdir=runs/ct10k \
        --config.data.datalist=ct10k.json

Sinkhorn matching with 100 iterations, queue of 200 x batch keys, 100k steps.
On a different number of devices set --config.batch_size (a multiple of the device count)
and --config.ssl.queue_size accordingly. ``--config=configs/ct10k.py:tiny`` shrinks it for a smoke run.
"""
from s2dc_jax.tasks.pretrain_config import preset


def get_config(arg=None):
    return preset(modality="ct", match="sinkhorn", batch_size=4, queue_num=200, arg=arg)
