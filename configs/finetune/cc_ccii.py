"""CC-CCII chest CT classification: NCP / CP / Normal, 3 folds.

Setup: volumes resized to 128 x 128 x 64, HU window [-1000, 1000], 100 epochs, 3-fold cross-validation (data.fold).

    python launch/finetune.py --config=configs/finetune/cc_ccii.py --workdir=runs/cc_ccii \
        --config.data.datalist=/data/cc_ccii/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: no --from layout fits: write a datalist with an integer class per entry
({"image": ..., "label": 0|1|2}), then check it: python launch/make_datalist.py --check LIST.json --task classification

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """cc_ccii fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("classification")
    c.model.in_channels, c.model.out_channels = 1, 3
    c.data.intensity = "window"
    c.data.a_min, c.data.a_max = -1000.0, 1000.0
    c.data.roi = (128, 128, 64)
    c.data.num_folds, c.data.fold = 3, 0
    c.data.flip_prob = 0.5
    c.batch_size = 8
    c.epochs = 100
    c.eval_every = 100
    return variant(c, arg)
