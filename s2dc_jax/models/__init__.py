"""s2dc_jax.models: the Swin-3D encoder and SwinUNETR (flax linen, channels-last, MONAI names)."""
from s2dc_jax.models.keys import init_key
from s2dc_jax.models.swin import SwinTransformer3D
from s2dc_jax.models.unetr import SwinUNETR

__all__ = ["SwinTransformer3D", "SwinUNETR", "init_key"]
