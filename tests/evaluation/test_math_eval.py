"""Math evaluation on in-memory completions: counts, pass@k / maj@k per problem and summary."""

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.evaluation.math_eval import default_answer_key, evaluate_math, from_pairwise
from darling_jax.evaluation.pass_at_k import maj_at_k, pass_at_k


def last_word_equals(completion, gold):
  words = completion.split()
  return bool(words) and words[-1] == gold


COMPLETIONS = [
    ["so 4", "so 5", "so 4", "so 4"],        # 3 of 4 right
    ["x 1", "x 2", "x 3", "nothing here"],   # 0 right
]
ANSWERS = ["4", "9"]


def test_counts_and_estimators():
  result = evaluate_math(COMPLETIONS, ANSWERS, quality=from_pairwise(last_word_equals),
                         answer_key=lambda text: text.split()[-1] if text[-1].isdigit() else None)
  first, second = result.per_problem
  assert (first["num_correct"], second["num_correct"]) == (3, 0)
  assert first["correct"] == [True, False, True, True]
  assert first["pass@k"] == {str(k): pass_at_k(4, 3, k) for k in (1, 2, 4)}
  assert first["maj@k"]["4"] == 1.0 and second["maj@k"]["4"] == 0.0
  assert first["maj@k"]["2"] == pytest.approx(
      maj_at_k(["4", "5", "4", "4"], [True, False, True, True], 2))
  assert second["answer_keys"] == ["1", "2", "3", None]
  summary = result.summary
  assert summary["ks"] == [1, 2, 4] and summary["num_problems"] == 2
  assert summary["pass@k"]["1"] == pytest.approx((0.75 + 0.0) / 2)
  assert summary["accuracy"] == pytest.approx(3 / 8)
  assert summary["mean_length"] == pytest.approx(np.mean([len(t) for g in COMPLETIONS for t in g]))
  assert summary["length_unit"] == "chars"


def test_token_lengths_custom_ks_and_no_maj():
  lengths = [[10, 20, 30, 40], [1, 1, 1, 1]]
  result = evaluate_math(COMPLETIONS, ANSWERS, quality=from_pairwise(last_word_equals),
                         lengths=lengths, ks=[3, 1], maj=False)
  assert result.summary["ks"] == [1, 3] and "maj@k" not in result.summary
  assert result.per_problem[0]["mean_length"] == 25.0
  assert result.summary["mean_length"] == pytest.approx(13.0)
  assert result.summary["length_unit"] == "tokens"


def test_bad_inputs():
  quality = from_pairwise(last_word_equals)
  with pytest.raises(InputError, match="3 groups for 2 problems"):
    evaluate_math(COMPLETIONS + [["a"] * 4], ANSWERS, quality=quality)
  with pytest.raises(InputError, match=r"completions\[1\]"):
    evaluate_math([["a", "b"], ["c"]], ANSWERS, quality=quality)
  with pytest.raises(InputError, match="every k"):
    evaluate_math(COMPLETIONS, ANSWERS, quality=quality, ks=[8])
  with pytest.raises(InputError, match="returned shape"):
    evaluate_math(COMPLETIONS, ANSWERS, quality=lambda p, c, cols: np.zeros((2, 3)))


def test_default_answer_key():
  assert default_answer_key("so the answer is \\boxed{1,000}.") == "1000"
  assert default_answer_key("blah\n#### 1000") == "1000"
  assert default_answer_key("x = \\boxed{\\frac{1}{2}}") == "1/2"
  assert default_answer_key("the set \\boxed{ \\{a,  b\\} }") == "\\{a, b\\}"
  assert default_answer_key("no answer at all") is None


def test_default_quality_is_math_verify():
  # The real verifier (worker processes): a boxed equivalent answer is right, a wrong one is not.
  completions = [["so \\boxed{\\frac{1}{2}}", "so \\boxed{0.5}", "so \\boxed{3}"],
                 ["so \\boxed{(3, \\frac{\\pi}{2})}", "\\boxed{(3, \\pi)}", "no box: 3"]]
  result = evaluate_math(completions, ["\\frac12", "\\left( 3, \\frac{\\pi}{2} \\right)"])
  assert result.per_problem[0]["correct"] == [True, True, False]
  assert result.per_problem[1]["correct"] == [True, False, False]
