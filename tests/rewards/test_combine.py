"""WeightedSum and the name -> built-in mapping."""

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rewards.combine import BUILTINS, WeightedSum, builtin, from_weights
from darling_jax.rewards.math_verify import GoldFormat, MathVerifyReward
from darling_jax.rewards.protocol import QualityFn, score_groups

PROMPTS = ["p0", "p1"]
COMPLETIONS = [["a", "bb", "ccc"], ["dddd", "e", ""]]


def length(prompts, completions, columns):
  return np.array([[len(c) for c in group] for group in completions], np.float64)


def is_short(prompts, completions, columns):
  return np.array([[len(c) <= 1 for c in group] for group in completions])


def test_weighted_sum_matches_numpy():
  combined = WeightedSum([(length, 0.5), (is_short, -2.0)])
  got_BxG = score_groups(combined, PROMPTS, COMPLETIONS)
  want_BxG = 0.5 * length(PROMPTS, COMPLETIONS, {}) - 2.0 * is_short(PROMPTS, COMPLETIONS, {})
  np.testing.assert_allclose(got_BxG, want_BxG, rtol=0, atol=1e-6)
  assert combined.name == "0.5*length + -2*is_short"
  parts = combined.components(PROMPTS, COMPLETIONS, {})
  assert list(parts) == ["length", "is_short"]
  np.testing.assert_array_equal(parts["is_short"], [[1, 0, 0], [0, 1, 1]])


def test_same_function_twice_keeps_both_components():
  parts = WeightedSum([(length, 1.0), (length, 2.0)]).components(PROMPTS, COMPLETIONS, {})
  assert list(parts) == ["length", "length#1"]


def test_broken_component_is_named():
  def wrong_shape(prompts, completions, columns):
    return np.zeros((1, 1))
  with pytest.raises(InputError) as e:
    WeightedSum([(length, 1.0), (wrong_shape, 1.0)])(PROMPTS, COMPLETIONS, {})
  assert "wrong_shape" in e.value.where


@pytest.mark.parametrize("terms", [
    [], [(length,)], [(length, float("nan"))], [(length, "1")], [("length", 1.0)],
    [(length, True)],
])
def test_bad_terms(terms):
  with pytest.raises(InputError):
    WeightedSum(terms)


def test_close_is_forwarded():
  closed = []

  class Closable:
    def __call__(self, prompts, completions, columns):
      return np.zeros((len(prompts), len(completions[0])))

    def close(self):
      closed.append(True)

  WeightedSum([(Closable(), 1.0), (length, 1.0), (Closable(), 2.0)]).close()
  assert closed == [True, True]


def test_builtins_by_name():
  assert set(BUILTINS) >= {"math_verify", "gsm8k", "reward_model"}
  for name in ("math_verify", "gsm8k"):
    fn = builtin(name, timeout_s=3.0)  # constructing starts no process
    assert isinstance(fn, QualityFn) and name in fn.name
    fn.close()
  with pytest.raises(InputError, match="reward_model: needs path"):
    builtin("reward_model")
  assert builtin("gsm8k").config.gold_format is GoldFormat.GSM8K
  with pytest.raises(InputError, match="built-ins: \\['gsm8k', 'math_verify', 'reward_model'\\]"):
    builtin("math_verfy")


def test_from_weights():
  single = from_weights({"math_verify": 1.0})
  assert isinstance(single, MathVerifyReward)
  mixed = from_weights({"math_verify": 1.0, "gsm8k": 0.5}, timeout_s=2.0)
  assert isinstance(mixed, WeightedSum) and [w for _, w in mixed.terms] == [1.0, 0.5]
  assert all(fn.config.timeout_s == 2.0 for fn, _ in mixed.terms)
  with pytest.raises(InputError):
    from_weights({})
