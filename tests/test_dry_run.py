"""--dry_run: the config, every entry's header, one compiled and timed step, before a long run starts."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from s2dc_jax.data.phantoms import write_phantom_dataset
from s2dc_jax.tasks.finetune import FinetuneTask
from s2dc_jax.tasks.pretrain import PretrainTask
from s2dc_jax.training import loop
from s2dc_jax.training.cli import load_config


def test_pretraining_dry_run_names_a_bad_file_before_anything_compiles(tmp_path):
    dl = Path(write_phantom_dataset(tmp_path / "data", num=3, modality="ct", shape=(64, 64, 32), seed=0,
                                    labels=False, targets=False))
    two = tmp_path / "data" / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 32, 2), np.float32), np.eye(4)), str(two))
    doc = json.loads(dl.read_text())
    doc["training"].append({"image": str(two)})
    dl.write_text(json.dumps(doc))
    lines = []
    c = load_config("configs/ct1k.py:tiny", [f"data.datalist={dl}", "data.phantoms=0", "num_devices=1"])
    assert loop.dry_run(PretrainTask(c), tmp_path / "run", log=lines.append) is False
    assert any(line.startswith(f"BAD {two}") and "2 channels" in line for line in lines), lines
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_finetuning_dry_run_compiles_and_times_one_step(tmp_path):
    dl = write_phantom_dataset(tmp_path / "data", num=2, num_val=1, modality="ct", shape=(32, 32, 32), seed=0,
                               targets=False)
    lines = []
    c = load_config("configs/finetune/btcv.py:tiny", [f"data.datalist={dl}", "model.out_channels=6",
                                                     "model.use_v2=False", "num_devices=2"])
    assert loop.dry_run(FinetuneTask(c), tmp_path / "run", log=lines.append) is True
    text = "\n".join(lines)
    assert "1 per device" in text and "peak about" in text and "one step:" in text and "3 of 3 entries usable" in text, text
    assert not (tmp_path / "run" / "checkpoints").exists()
