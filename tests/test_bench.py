"""launch/benchmark.py pretrain: the figures it derives and prints, and its rows on a tiny config (no timing claims)."""
import pytest

from s2dc_jax.bench import pretrain as bench


def test_peak_table_matches_device_names():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert bench.peak_tflops("NVIDIA H200", "float32") == pytest.approx(494.5)
    assert bench.peak_tflops("cpu", "float32") is None


def test_table_gives_rates_mfu_loop_overhead_and_baseline_ratio():
    common = {"device": "1 x TFRT_CPU_0", "peak_bytes": 2**30, "peak_kind": "host RSS", "warmup_s": 10.0}
    rows = [
        dict(common, framework="jax (model.crop_group=16)", step_s=0.5, volumes_per_s=4.0,
             tflops_per_s=0.1, mfu=0.5),
        dict(common, framework="jax", step_s=0.25, volumes_per_s=8.0, tflops_per_s=0.2, mfu=None),
        dict(common, framework="jax loop", step_s=0.3, volumes_per_s=6.7),
        dict(common, framework="torch+monai", step_s=1.0, volumes_per_s=2.0),
    ]
    out = bench.format_table(rows)
    assert "| jax (model.crop_group=16) | 1 x TFRT_CPU_0 | 0.500 | 4.00 | 0.1 (50.0%) |" in out
    assert "| jax | 1 x TFRT_CPU_0 | 0.250 | 8.00 | 0.2 |" in out
    assert "The step is 2.00x the speed of jax (model.crop_group=16)." in out
    assert "The training loop adds +50 ms per step to the bare step (+20.0%)." in out
    assert "JAX step is 4.00x the speed of the PyTorch + MONAI step." in out


def test_failed_rows_are_shown_and_left_out_of_the_ratios():
    rows = [{"framework": "jax", "device": "1 x cpu", "step_s": 0.25, "volumes_per_s": 8.0, "peak_bytes": 2**30,
             "peak_kind": "host RSS", "warmup_s": 1.0},
            {"framework": "jax (model.crop_group=16)", "failed": "exit 1: RESOURCE_EXHAUSTED: out of memory"}]
    out = bench.format_table(rows)
    assert "| jax (model.crop_group=16) | failed: exit 1: RESOURCE_EXHAUSTED" in out
    assert "The step is" not in out


@pytest.mark.slow
def test_loop_row_and_a_failing_baseline_on_a_tiny_config():
    """The loop row is timed from its log (no checkpoint save in the window); a baseline that fails is a row."""
    from test_train import tiny_config

    config = tiny_config(batch_size=1, num_devices=1, **{"data.phantoms": 1, "data.phantom_shape": (64, 64, 32)})
    broken = tiny_config(batch_size=1, num_devices=1, **{"data.crop_size": 24})  # does not divide the ROI: the child stops
    loop_row, failed = bench.compare(config, steps=1, warmup=1, frameworks=("loop",), baseline=broken,
                                     baseline_label="crop 24")
    assert loop_row["framework"] == "jax loop" and loop_row["step_s"] > 0 and loop_row["flops_per_device"] > 1e8
    assert loop_row["tflops_per_s"] > 0 and loop_row["mfu"] is None  # no known peak for a CPU
    assert failed["framework"] == "jax (crop 24)" and failed["failed"].startswith("exit ")


def test_profile_flag_needs_the_jax_step(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "launch" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["pretrain", "--config", "configs/demo.py", "--frameworks", "torch", "--profile", "2"]) == 2
    assert "add jax to --frameworks" in capsys.readouterr().err
    assert cli.main(["pretrain", "--config", "configs/demo.py", "--profile", "-1"]) == 2
    assert "--profile -1" in capsys.readouterr().err
