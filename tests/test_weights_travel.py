"""The architecture and the merging rule travel with the weights: export metadata, the printed MONAI line, init."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from s2dc_jax.interop import read_metadata, save_params
from s2dc_jax.interop.export import export
from s2dc_jax.models import SwinTransformer3D
from s2dc_jax.tasks import finetune_config
from s2dc_jax.tasks.finetune import FinetuneTask

ARCH = dict(in_channels=1, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, use_v2=False)


def _encoder_file(tmp_path):
    model = SwinTransformer3D(**ARCH)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 32, 1)))["params"]
    src = str(tmp_path / "encoder_params.safetensors")
    save_params(src, params)
    return src


def _seg_config(weights):
    c = finetune_config.shrink(finetune_config.base_config("segmentation"))  # feature 12, heads (1, 2, 2, 4), window 7
    c.data.datalist = "unused.json"
    c.init.torch = weights
    return c


def test_exported_file_records_the_model_and_the_printed_line_loads_it(tmp_path):
    logs = []
    out = str(tmp_path / "enc.safetensors")
    res = export(_encoder_file(tmp_path), out, log=logs.append, parity=False)
    meta = read_metadata(out)
    assert meta["merging"] == "monai" and meta["what"] == "encoder"
    args = json.loads(meta["monai_args"])
    assert (args["feature_size"], tuple(args["num_heads"]), args["window_size"], args["use_v2"]) == (12, (1, 1, 2, 2), 4,
                                                                                                      False)
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o600)  # readable like any file the user writes
    line = res["monai_line"]
    assert line in "\n".join(logs)
    r = subprocess.run([sys.executable, "-c", line], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "0 swinViT keys missing, 0 unexpected"


def test_legacy_export_warns_and_fine_tuning_takes_rule_and_architecture_from_the_file(tmp_path):
    logs = []
    out = str(tmp_path / "legacy.pt")
    export(_encoder_file(tmp_path), out, merging="legacy", log=logs.append, parity=False)
    assert read_metadata(out)["merging"] == "legacy"
    assert any("MONAI >= 1.5" in line and "merging=legacy" in line for line in logs)

    task = FinetuneTask(_seg_config(out))
    m = task.config.model
    assert (m.merging, tuple(m.num_heads), m.window_size, m.use_v2) == ("legacy", (1, 1, 2, 2), 4, False)
    assert any("architecture from the weights" in line for line in task.init_lines)
    # A value the user set on purpose that the weights contradict is an error naming both.
    with pytest.raises(ValueError, match=r"model.window_size=7 but the weights have 4"):
        FinetuneTask(_seg_config(out), explicit={"model.window_size"})
    c = _seg_config(out)
    c.model.merging = "monai"
    with pytest.raises(ValueError, match="model.merging='monai' but the weights have 'legacy'"):
        FinetuneTask(c, explicit={"model.merging"})


def test_a_file_without_a_rule_gets_the_hint_and_keeps_the_configured_one(tmp_path):
    from s2dc_jax.interop import MERGING_HINT, read_state_dict, write_state_dict

    bare = str(tmp_path / "bare.safetensors")
    export(_encoder_file(tmp_path), str(tmp_path / "x.safetensors"), log=lambda s: None, parity=False)
    write_state_dict(bare, read_state_dict(str(tmp_path / "x.safetensors")))  # the same keys, no metadata
    task = FinetuneTask(_seg_config(bare))
    assert task.config.model.merging == "monai" and MERGING_HINT in task.init_lines
    c = _seg_config(bare)
    c.model.merging = "legacy"
    task = FinetuneTask(c, explicit={"model.merging"})
    assert task.config.model.merging == "legacy" and MERGING_HINT not in task.init_lines
