"""End to end: launch/finetune_classification.py on CT phantoms with 3 classes, 3-fold split."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_finetune_segmentation import run_entry  # noqa: E402

from s2dc_jax.data.phantoms import write_phantom_dataset  # noqa: E402


def test_classification_entry_point(tmp_path):
  # Classes: 0 normal, 1 focal liver lesions, 2 diffuse liver change (s2dc_jax.data.phantoms).
  dl = write_phantom_dataset(tmp_path / "data", num=12, modality="ct", shape=(32, 32, 32), seed=1,
                             targets=False)
  work = tmp_path / "run"
  evals, r = run_entry("classification", "cc_ccii.py:tiny", work, f"--config.data.datalist={dl}",
                       "--config.data.target_key=class", "--config.total_steps=24", "--config.eval_every=24",
                       "--config.num_devices=2", "--config.batch_size=4", "--config.optim.lr=0.001",
                       "--config.eval.at_start=True", "--config.model.use_v2=False",
                       "--config.data.flip_prob=0.0")
  assert r.returncode == 0, r.stderr[-3000:]
  s, e = evals[0], evals[24]
  print(f"classification: accuracy {s['accuracy']:.3f} -> {e['accuracy']:.3f}, AUC {s['auc']:.3f} -> {e['auc']:.3f}")
  assert e["auc"] > s["auc"] + 0.2 and e["accuracy"] > s["accuracy"], (s, e)
  rows = (work / "predictions" / "predictions.csv").read_text().splitlines()
  assert rows[0].startswith("path,label,pred") and len(rows) == 1 + 4  # fold 0 of 3 over 12 scans
