"""The demo: S2DC on synthetic CT phantoms, a small Swin, on a laptop CPU in a few minutes.

    python launch/pretrain.py --config=configs/demo.py --workdir=runs/demo

It writes a handful of phantom NIfTI volumes into WORKDIR/phantoms (read back through
the real loader), pretrains for a few dozen steps and logs the correspondence accuracy
(the fraction of ground-truth patch pairs matched correctly), which should rise
clearly above its starting value. Then:

    python launch/export_torch.py --checkpoint=runs/demo --out=runs/demo/encoder.safetensors
"""
from s2dc_jax.training.config import pretrain_config


def get_config(arg=None):
    del arg
    c = pretrain_config()
    c.total_steps = 60
    c.batch_size = 2
    c.log_every = 5
    c.checkpoint_every = 20
    c.keep_checkpoints = 2
    c.model.feature_size = 12
    c.model.depths = (1, 1, 1, 1)
    c.model.num_heads = (1, 1, 2, 2)
    c.model.use_v2 = True
    c.data.modality = "ct"
    c.data.phantoms = 8
    c.data.roi_large = (128, 128, 32)
    c.data.crop_size = 32
    c.data.workers = 0
    c.ssl.match = "dual_softmax"
    c.ssl.head_hidden = 128
    c.ssl.head_dim = 64
    c.ssl.queue_size = 32
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    return c
