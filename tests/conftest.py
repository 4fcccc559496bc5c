"""Test-wide JAX settings: 8 host CPU devices (for mesh tests) and strict rank promotion."""

import os

# Must be set before jax initialises its backends: lets any test build an 8-device CPU mesh.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# The tests compare float32 numerics against torch at 1e-4; keep matmuls at full precision.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    skip = pytest.mark.skip(reason="torch/transformers (the `test` extra) not installed")
    for item in items:
      if "torch" in item.keywords:
        item.add_marker(skip)
