"""The quality stage has a per-step budget: quality.step_timeout_s reaches the verifier pool, and
answers still running when it passes score 0 and are counted."""

import time

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.train.components import build_quality
from darling_jax.train.config import QualityConfig, TrainConfig
from darling_jax.train.overrides import apply_overrides

# Comparing a power tower with the number 9 makes sympy evaluate it, which never finishes (the
# same answer tests/rewards/test_math_verify.py kills); the per-answer limit is high here so that
# only the step budget can stop them.
HANGING = r"\boxed{9^{9^{9^{9}}}}"


@pytest.mark.slow
def test_step_budget_reaches_the_verifier_and_counts_unfinished_answers():
  cfg = apply_overrides(TrainConfig(), ["quality.functions=math_verify:1.0",
                                        "quality.timeout_s=60", "quality.step_timeout_s=3"])
  reward = build_quality(cfg)
  assert reward.config.batch_timeout_s == 3 and reward.config.timeout_s == 60
  try:
    reward.start()
    t0 = time.monotonic()
    completions = [[f"Try {i}: " + HANGING for i in range(6)] + [r"\boxed{9}", "no answer"]]
    scores = reward(["p"], completions, {"answer": ["9"]})
    elapsed = time.monotonic() - t0
  finally:
    reward.close()
  assert elapsed < 3 + 10  # the budget, plus killing and restarting workers
  np.testing.assert_array_equal(scores, [[0] * 6 + [1, 0]])
  assert reward.last_stats.unfinished + reward.last_stats.timed_out >= 1


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_bad_step_budget_is_one_error_naming_the_field(value):
  with pytest.raises(InputError, match="quality.step_timeout_s"):
    apply_overrides(TrainConfig(), [f"quality.step_timeout_s={value}"])
  assert QualityConfig(step_timeout_s=None).step_timeout_s is None
