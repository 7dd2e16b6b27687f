"""ADNI PET classification: CN / MCI / AD with a subject-level split.

Setup: volumes resized to 96^3, z-score per volume, 300 epochs, 5 folds over subjects (entry field 'subject').

    python launch/finetune.py --config=configs/finetune/adni.py --workdir=runs/adni \
        --config.data.datalist=/data/adni/datalist.json [--config.init.checkpoint=runs/pretrain]

Data: no --from layout fits: write a datalist with an integer class and a 'subject' per entry
({"image": ..., "label": 0|1|2, "subject": ...}), then check it: python launch/make_datalist.py --check LIST.json --task classification

Variant ':tiny' (feature size 12, 32^3 crops, 40 steps) is a smoke run on any datalist,
e.g. synthetic phantoms from s2dc_jax.data.phantoms; minutes on a laptop CPU.
"""
from s2dc_jax.tasks.finetune_config import base_config, variant


def get_config(arg=None):
    """adni fine-tuning config; arg 'tiny' shrinks it for a smoke run."""
    c = base_config("classification")
    c.model.in_channels, c.model.out_channels = 1, 3
    c.data.intensity = "zscore"
    c.data.roi = (96, 96, 96)
    c.data.num_folds, c.data.fold = 5, 0
    c.data.subject_key = "subject"  # scans of one subject never straddle train and validation
    c.data.flip_prob = 0.5
    c.batch_size = 8
    c.epochs = 300
    c.eval_every = 100
    return variant(c, arg)
