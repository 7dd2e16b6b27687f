"""End to end: translation (MRI T1 -> T2-like) and reconstruction (low-dose -> full-dose PET) entry points."""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune_segmentation import run_entry  # noqa: E402

from s2dc_jax.data.phantoms import write_phantom_dataset  # noqa: E402


@pytest.mark.parametrize("task,config,modality", [("translation", "brats23_t1_t2.py", "mri"),
                                                  ("reconstruction", "udpet.py", "pet")])
def test_regression_entry_point(tmp_path, task, config, modality):
    dl = write_phantom_dataset(tmp_path / "data", num=3, num_val=1, modality=modality, shape=(32, 32, 32),
                               seed=2, labels=False, orientations=("LPS",))
    work = tmp_path / "run"
    evals, r = run_entry(task, config + ":tiny", work, f"--config.data.datalist={dl}", "--config.total_steps=16",
                         "--config.eval_every=16", "--config.num_devices=2", "--config.optim.lr=0.002",
                         "--config.eval.at_start=True", "--config.model.use_v2=False", "--config.eval.ssim_win=5")
    assert r.returncode == 0, r.stderr[-3000:]
    s, e = evals[0], evals[16]
    print(f"{task}: PSNR {s['psnr']:.2f} -> {e['psnr']:.2f} dB, SSIM {s['ssim']:.3f} -> {e['ssim']:.3f}, "
          f"NRMSE {s['nrmse']:.3f} -> {e['nrmse']:.3f}")
    assert e["psnr"] > s["psnr"] + 3.0 and e["nrmse"] < s["nrmse"], (s, e)
    src = nib.load(Path(dl).parent / f"{modality}_0003.nii.gz")
    pred = nib.load(work / "predictions" / f"{modality}_0003_pred.nii.gz")
    np.testing.assert_allclose(pred.affine, src.affine)
    assert pred.shape == src.shape and np.isfinite(np.asarray(pred.dataobj)).all()
