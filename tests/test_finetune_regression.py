"""End to end: translation (MRI T1 -> T2-like) and reconstruction (low-dose -> full-dose PET) fine-tuning."""
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune_segmentation import finetune  # noqa: E402

from s2dc_jax.data.phantoms import write_phantom_dataset  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("config,modality", [("brats23_t1_t2.py", "mri"), ("udpet.py", "pet")])
def test_regression_beats_untrained(tmp_path, config, modality):
    dl = write_phantom_dataset(tmp_path / "data", num=3, num_val=1, modality=modality, shape=(32, 32, 32),
                               seed=2, labels=False, orientations=("LPS",))
    work = tmp_path / "run"
    r, task = finetune(config + ":tiny", work, f"data.datalist={dl}", "total_steps=10", "eval_every=10",
                       "num_devices=2", "optim.lr=0.002", "eval.at_start=True", "model.use_v2=False",
                       "eval.ssim_win=5")
    s, e = dict(r["history"])[0], dict(r["history"])[10]
    print(f"{task.name}: PSNR {s['psnr']:.2f} -> {e['psnr']:.2f} dB, SSIM {s['ssim']:.3f} -> {e['ssim']:.3f}, "
          f"NRMSE {s['nrmse']:.3f} -> {e['nrmse']:.3f}")
    assert e["psnr"] > s["psnr"] + 3.0 and e["nrmse"] < s["nrmse"], (s, e)
    src = nib.load(Path(dl).parent / f"{modality}_0003.nii.gz")
    pred = nib.load(work / "predictions" / f"{modality}_0003_pred.nii.gz")
    np.testing.assert_allclose(pred.affine, src.affine)
    assert pred.shape == src.shape and np.isfinite(np.asarray(pred.dataobj)).all()
