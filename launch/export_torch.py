"""Export weights to PyTorch/MONAI key names.

    python launch/export_torch.py --checkpoint=runs/mri6k --out=encoder.pt
    python launch/export_torch.py --checkpoint=params.safetensors --out=model.safetensors --what=swinunetr

--checkpoint is a pretraining workdir (or one of its step folders; --step picks a step,
default the latest) or a flat params file (.safetensors / .npz from
`s2dc_jax.interop.save_params`, or a MONAI-layout .pt/.safetensors). `--what=encoder`
writes `swinViT.*` keys that load into MONAI `SwinUNETR` with `strict=False`.
Prints the key count and, when torch + MONAI are installed, the max abs difference of
MONAI's output from ours on a random input.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir, step folder, or params file (.safetensors/.npz/.pt).")
_STEP = flags.DEFINE_integer("step", None, "Step to export from a workdir (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output file: .pt (torch.save {'state_dict': ...}) or .safetensors.")
_WHAT = flags.DEFINE_enum("what", "encoder", ["encoder", "swinunetr"], "Encoder only, or a whole SwinUNETR.")
_PARITY = flags.DEFINE_bool("parity", True, "Measure parity against MONAI when torch and MONAI are installed.")
_PARITY_SIZE = flags.DEFINE_integer("parity_size", 64, "Cubic input side for the parity check (multiple of 32).")
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO
    from s2dc_jax.interop.export import export

    try:
        export(_CHECKPOINT.value, _OUT.value, what=_WHAT.value, step=_STEP.value,
               parity=_PARITY.value, parity_size=_PARITY_SIZE.value)
    except (ValueError, FileNotFoundError) as e:
        print(f"export_torch.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
