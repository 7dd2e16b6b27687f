"""The export command (launch/export_torch.py, s2dc-export): our weights to a MONAI-layout file."""
from __future__ import annotations

import sys

from absl import app, flags

from s2dc_jax._cli import fail, parse_with_help, quiet_libraries

DOC = """Export weights to PyTorch/MONAI key names.

    s2dc-export --checkpoint=runs/mri6k --out=encoder.safetensors            # a pretraining run: its encoder
    s2dc-export --checkpoint=runs/btcv/best --out=model.pt --what=swinunetr  # a fine-tuned SwinUNETR
    python launch/export_torch.py --checkpoint=runs/mri6k --out=encoder.pt

--checkpoint is a run folder (a pretraining or fine-tuning workdir, its checkpoints/ or
best/ folder, or one step folder; --step picks a step, default the latest) or a weights file
(.safetensors/.npz of our flax params, or a MONAI-layout .pt/.safetensors). --what=encoder
writes `swinViT.*` keys that load into MONAI SwinUNETR with strict=False; --what=swinunetr a
whole fine-tuned SwinUNETR (strict=True). The file records the merging rule and MONAI's
constructor arguments; the command prints the line that builds the MONAI model and loads
the file, and, when torch + MONAI are installed, the max abs difference of MONAI's output
from ours on a random input.
"""


def main(script: str = "export_torch.py") -> None:
    """Define the flags and export; user mistakes end in one line and exit status 2."""
    f = flags.FLAGS
    flags.DEFINE_string("checkpoint", None, "Run folder (workdir, checkpoints/, best/, a step) or weights file.")
    flags.DEFINE_integer("step", None, "Step to export from a run folder (default: the latest).")
    flags.DEFINE_string("out", None, "Output file: .pt (torch.save {'state_dict', 'metadata'}) or .safetensors.")
    flags.DEFINE_enum("what", "encoder", ["encoder", "swinunetr"], "Encoder only, or a whole SwinUNETR.")
    flags.DEFINE_enum("merging", "auto", ["auto", "monai", "legacy"],
                      "Patch-merging rule: auto = what the run or file records (else monai, MONAI >= 1.5); "
                      "legacy = MONAI <= 1.4's, for weights trained there.")
    flags.DEFINE_enum("source", "student", ["student", "teacher"], "Which EMA copy of a pretraining state.")
    flags.DEFINE_bool("parity", True, "Measure parity against MONAI when torch and MONAI are installed.")
    flags.DEFINE_integer("parity_size", 64, "Cubic input side for the parity check (multiple of 32).")
    names = ("checkpoint", "step", "out", "what", "merging", "source", "parity", "parity_size")
    for name in names:
        f.register_key_flag_for_module(sys.argv[0], f[name])  # listed by --help
    sys.modules["__main__"].__doc__ = DOC

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        quiet_libraries()
        for name in ("checkpoint", "out"):
            if not f[name].value:
                fail(script, f"--{name} is required (see --help)")
        from s2dc_jax.interop.export import export

        try:
            export(f.checkpoint, f.out, what=f.what, step=f.step, parity=f.parity, parity_size=f.parity_size,
                   merging=f.merging, source=f.source)
        except (ValueError, FileNotFoundError, PermissionError) as e:
            fail(script, str(e))

    def parse(argv):
        try:
            return parse_with_help(f, argv)
        except flags.Error as e:
            fail(script, str(e))

    app.run(run, flags_parser=parse)


def script() -> None:
    """Entry point of the installed ``s2dc-export`` command."""
    main("s2dc-export")
