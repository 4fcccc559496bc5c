"""The loop's update through each layout: step 0 (same rollouts) gives the same loss and metrics
whether the batch is padded, bucketed or packed, with the KL reference and recomputed pi_old
going through the same layout."""

import pathlib

import numpy as np
import pytest

from darling_jax.train.config import load_config_file
from darling_jax.train.loop import train
from darling_jax.train.overrides import apply_overrides

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
COMPARED = ("loss", "pg_loss", "grad_norm", "update_norm", "entropy", "kl", "ratio_mean",
            "pg_clipfrac", "response_tokens", "param_norm")


def _step0(tmp_path, layout):
  config = apply_overrides(load_config_file(REPO / "configs/smoke.py"), [
      f"workdir={tmp_path / layout}", "steps=1", "diversity.source=ngram", "update.kl.beta=0.05",
      "sampler.top_p=0.9", f"update.layout={layout}", "update.max_tokens_per_micro_batch=0"])
  return train(config, progress=False).last_metrics


def test_padded_bucketed_packed_agree_in_the_loop(tmp_path):
  ref = _step0(tmp_path, "padded")
  for layout in ("bucketed", "packed"):
    got = _step0(tmp_path, layout)
    assert got["layout_fill"] > ref.get("layout_fill", 0.0)
    for k in COMPARED:
      np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=1e-7, err_msg=f"{layout} {k}")
