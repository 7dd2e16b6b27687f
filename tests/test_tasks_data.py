"""Fine-tuning data and losses: k-fold and subject-level splits, crops, Dice+CE against MONAI."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import finetune_config as task_config
from s2dc_jax.tasks import losses, segmentation


def test_dice_ce_matches_monai():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 6, 5, 4))
    ours, _ = losses.dice_ce_loss(jnp.asarray(logits), jnp.asarray(labels))
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(torch.from_numpy(np.moveaxis(logits, -1, 1)),
                                                     torch.from_numpy(labels[:, None]))
    assert abs(float(ours) - float(ref)) < 1e-5


def test_kfold_is_a_partition_and_subject_level():
    entries = [{"image": f"s{i // 3}_{i % 3}.nii.gz", "subject": f"s{i // 3}"} for i in range(30)]
    seen = []
    for fold in range(5):
        train, val = task_data.kfold_split(entries, 5, fold, seed=0, subject_key="subject")
        assert len(train) + len(val) == 30
        assert not {e["subject"] for e in train} & {e["subject"] for e in val}
        seen += [e["image"] for e in val]
    assert sorted(seen) == sorted(e["image"] for e in entries)
    with pytest.raises(ValueError, match="subject_key"):
        task_data.kfold_split([{"image": "a"}] * 4, 2, 0, 0, subject_key="subject")
    with pytest.raises(ValueError, match="num_folds"):
        task_data.kfold_split(entries[:3], 5, 0, 0)


def test_foreground_biased_crops_and_determinism():
    c = task_config.base_config("segmentation")
    c.data.roi, c.batch_size, c.data.flip_prob = (8, 8, 8), 16, 0.0
    lab = np.zeros((40, 40, 40), np.int32)
    lab[30:34, 30:34, 30:34] = 1  # 0.1% foreground
    case = task_data.Case(image=np.zeros((40, 40, 40, 1), np.float32), target=lab, meta={})

    def fg(ratio):
        c.data.pos_ratio = ratio
        rng = np.random.default_rng(0)
        return np.mean([(segmentation.sample(case, rng, c)[1] > 0).any() for _ in range(200)])

    assert fg(1.0) == 1.0 and fg(0.0) < 0.3
    c.data.pos_ratio = 0.5

    def batches(process_index, process_count, n=3):
        ds = task_data.sample_dataset([case, case], lambda k, rng: segmentation.sample(k, rng, c), batch_size=4,
                                      seed=0, process_index=process_index, process_count=process_count)
        it = iter(ds)
        return [next(it) for _ in range(n)], it

    one, it = batches(0, 1)
    again, _ = batches(0, 1)
    for a, b in zip(one, again):  # a batch is a function of (seed, step)
        np.testing.assert_array_equal(a["target"], b["target"])
    # Two processes: each gets its half of every global batch, in order.
    (p0, _), (p1, _) = batches(0, 2), batches(1, 2)
    for g, a, b in zip(one, p0, p1):
        np.testing.assert_array_equal(g["image"], np.concatenate([a["image"], b["image"]]))
        np.testing.assert_array_equal(g["target"], np.concatenate([a["target"], b["target"]]))
    # The iterator's position restores: the next batch after a restore is the next batch.
    state = it.get_state()
    nxt = next(it)
    _, fresh = batches(0, 1, n=0)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["target"], nxt["target"])


def test_intensity_and_validate():
    x = np.array([-1000.0, -175.0, 37.5, 250.0, 900.0], np.float32).reshape(1, 1, 5, 1)
    np.testing.assert_allclose(task_data.intensity(x, "window", -175, 250).ravel(), [0, 0, 0.5, 1, 1], atol=1e-6)
    z = task_data.intensity(np.array([0, 1, 2, 3], np.float32).reshape(1, 1, 4, 1), "zscore_nonzero")
    assert z.ravel()[0] == 0 and abs(z.ravel()[1:].mean()) < 1e-6
    c = task_config.base_config("segmentation")
    c.data.datalist = "x.json"
    for field, value in [("data.intensity", "clip"), ("eval.mode", "linear"), ("loss.name", "l1")]:
        bad = c.copy_and_resolve_references()
        sec, key = field.split(".")
        bad[sec][key] = value
        with pytest.raises(ValueError, match=field):
            task_config.validate(bad, 2)
    bad = c.copy_and_resolve_references()
    bad.batch_size = 3
    with pytest.raises(ValueError, match="batch_size"):
        task_config.validate(bad, 2)
    bad = c.copy_and_resolve_references()
    bad.data.roi = (48, 48, 48)
    with pytest.raises(ValueError, match="data.roi"):
        task_config.validate(bad, 2)


def test_classes_absent_from_the_validation_labels_are_counted_not_nan():
    c = task_config.base_config("segmentation")
    c.model.out_channels = 4
    lab = np.zeros((8, 8, 8), np.int32)
    lab[2:5, 2:5, 2:5] = 1  # classes 2 and 3 appear nowhere
    case = task_data.Case(image=np.zeros((8, 8, 8, 1), np.float32), target=lab, meta={})

    def predict(params, x):  # predicts the label itself
        return jnp.asarray(np.eye(4, dtype=np.float32)[lab][None])

    out = segmentation.evaluate(predict, None, [case], [{"image": "a.nii.gz"}], c)
    assert out == {"dice": 1.0, "classes_absent": 2.0, "dice_class1": 1.0}
