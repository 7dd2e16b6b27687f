"""Test setup: JAX on CPU with 8 simulated devices, before anything imports jax."""
import getpass
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole suite: both xdist workers and every launch/*.py
# subprocess a test starts (they inherit the environment). Most tests compile the same tiny programs
# again in a new process; a cache hit turns a ~35 s pretraining compile into ~3 s. Entries are keyed
# by the HLO, the flags and the jax version, so a hit is the same executable. Override with the variable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"s2dc_jax_test_xla_cache_{getpass.getuser()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """The slow tests first: pytest-xdist hands tests out in this order, so the minutes-long ones
    start early on both workers and the run does not end on one of them while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise
