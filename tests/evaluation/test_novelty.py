"""NoveltyBench distinct / utility on constructed groups, against hand-computed values."""

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.evaluation.novelty import (
    evaluate_novelty, exact_match_equivalence, novelty_metrics)


def probs_from_pairs(g, similar_pairs, value=0.9):
  """[1, G, G] probabilities: `value` on the listed (i, j) pairs (both orders), 0.1 elsewhere."""
  probs = np.full((1, g, g), 0.1, np.float32)
  for i, j in similar_pairs:
    probs[0, i, j] = probs[0, j, i] = value
  return probs


def test_hand_computed_distinct_and_utility():
  # Generations 0 ~ 1 (same joke twice), 2 and 3 new: classes [0, 0, 2, 3].
  gens = [["joke A", "joke A again", "joke B", "joke C"]]
  quality = lambda prompts, completions, columns: np.array([[5.0, 9.0, 2.0, 10.0]])
  result = evaluate_novelty(["tell a joke"], gens, threshold=0.5, quality=quality,
                            equivalence=lambda p, g: probs_from_pairs(4, [(0, 1)]))
  [record] = result.per_prompt
  assert record["classes"] == [0, 0, 2, 3] and record["distinct"] == 3
  p = 0.8  # only novel generations count: u_0 = 5, u_2 = 2, u_3 = 10 (u_1 = 9 is a repeat)
  expected = (1 * 5 + p**2 * 2 + p**3 * 10) / (1 + p + p**2 + p**3)
  assert record["utility"] == pytest.approx(expected, rel=1e-12)
  assert result.summary["distinct"] == 3.0
  assert result.summary["utility"] == pytest.approx(expected, rel=1e-12)


def test_greedy_partition_is_not_transitive():
  # 0 ~ 1 and 1 ~ 2 but 0 !~ 2: greedy compares 2 with the class representative 0 only, so 2
  # opens a class (a transitive closure would merge all three).
  result = evaluate_novelty(["p"], [["a", "b", "c"]],
                            equivalence=lambda p, g: probs_from_pairs(3, [(0, 1), (1, 2)]))
  assert result.per_prompt[0]["classes"] == [0, 0, 2]
  assert result.per_prompt[0]["distinct"] == 2
  # u_i = 1: utility = (1 + p^2) / (1 + p + p^2).
  assert result.per_prompt[0]["utility"] == pytest.approx((1 + 0.64) / (1 + 0.8 + 0.64))


def test_threshold_is_strict_and_patience_matters():
  eq = lambda p, g: probs_from_pairs(2, [(0, 1)], value=0.5)
  assert evaluate_novelty(["p"], [["a", "b"]], equivalence=eq, threshold=0.5
                          ).per_prompt[0]["distinct"] == 2
  assert evaluate_novelty(["p"], [["a", "b"]], equivalence=eq, threshold=0.49
                          ).per_prompt[0]["distinct"] == 1
  distinct_B, utility_B = novelty_metrics(np.array([[0, 1], [0, 0]]), np.ones((2, 2)), patience=0.5)
  assert distinct_B.tolist() == [2, 1]
  np.testing.assert_allclose(utility_B, [1.0, 1 / 1.5], rtol=1e-12)


def test_exact_match_equivalence_over_several_prompts():
  gens = [["Paris.", "paris.", "  Paris. ", "Lyon"], ["x", "y", "z", "x"]]
  probs = exact_match_equivalence(["a", "b"], gens)
  assert probs.shape == (2, 4, 4) and probs[0, 0, 1] == 1.0 and probs[0, 0, 3] == 0.0
  result = evaluate_novelty(["a", "b"], gens)
  assert [r["distinct"] for r in result.per_prompt] == [2, 3]
  assert result.summary["distinct"] == 2.5 and result.summary["num_generations"] == 4


def test_bad_inputs():
  with pytest.raises(InputError, match="returned shape"):
    evaluate_novelty(["p"], [["a", "b"]], equivalence=lambda p, g: np.zeros((1, 3, 3)))
  with pytest.raises(InputError, match="non-finite"):
    evaluate_novelty(["p"], [["a", "b"]], equivalence=lambda p, g: np.full((1, 2, 2), np.nan))
  with pytest.raises(InputError, match="patience"):
    novelty_metrics(np.zeros((1, 2), int), np.ones((1, 2)), patience=0.0)
  with pytest.raises(InputError, match=r"completions\[1\]"):
    evaluate_novelty(["p", "q"], [["a", "b"], ["c"]])
