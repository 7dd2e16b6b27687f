"""S2DC on CT-1k (BTCV + TCIA Covid19), docs/method.md sections 1-4: 1 GPU, 1 volume per step.

    python launch/make_datalist.py --root /data/ct1k --out ct1k.json
    python launch/pretrain.py --config=configs/ct1k.py --workdir=runs/ct1k \
        --config.data.datalist=ct1k.json

Sinkhorn matching with 100 iterations, queue of 90 x batch keys, 100k steps.
``--config=configs/ct1k.py:tiny`` shrinks it for a smoke run.
"""
from s2dc_jax.tasks.pretrain_config import preset


def get_config(arg=None):
    return preset(modality="ct", match="sinkhorn", batch_size=1, queue_num=90, arg=arg)
