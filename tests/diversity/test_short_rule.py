"""Tests `darling_jax/diversity/short_rule.py` against hand-worked cases and the reference rule."""

import numpy as np
import pytest

from darling_jax.diversity.short_rule import short_pair_verdict, short_rule_matrix
from darling_jax.errors import InputError


def reference_maybe_test_equality(a: str, b: str):
  """NoveltyBench's `maybe_test_equality` (src/partition.py), transcribed."""
  u0, u1 = a.strip().lower().split(), b.strip().lower().split()
  max_len = max(len(u0), len(u1))
  if max_len <= 5:
    return len(set(u0) & set(u1)) * 2 >= max_len
  return None


@pytest.mark.parametrize("a, b, expected", [
    ("Paris", "paris", True),  # lower-cased
    ("Paris.", "Paris", False),  # punctuation is part of the word
    ("the cat sat", "the dog sat", True),  # 2 shared * 2 = 4 >= 3
    ("red green blue", "red yellow purple", False),  # 1 * 2 = 2 < 3
    ("a b c d", "a b x y", True),  # 2 * 2 = 4 >= 4
    ("a a a a a", "a", False),  # lengths count repeats, overlap distinct words: 2 * 1 < 5
    ("one two three four five six", "one", None),  # 6 words: the model decides
    ("", "", True),  # two empty answers: 0 >= 0
    ("", "word", False),
])
def test_hand_cases(a, b, expected):
  assert short_pair_verdict(a, b) == expected
  assert short_pair_verdict(b, a) == expected
  assert reference_maybe_test_equality(a, b) == expected


def test_matrix_matches_pairwise_rule_and_reference():
  rng = np.random.default_rng(0)
  vocab = ["a", "b", "c", "D", "d", "e"]
  groups = [[" ".join(rng.choice(vocab, size=rng.integers(0, 8))) for _ in range(6)]
            for _ in range(20)]
  applies, verdict = short_rule_matrix(groups)
  assert applies.shape == verdict.shape == (20, 6, 6)
  for b, grp in enumerate(groups):
    for i in range(6):
      for j in range(6):
        ref = reference_maybe_test_equality(grp[i], grp[j])
        assert applies[b, i, j] == (ref is not None)
        if ref is not None:
          assert verdict[b, i, j] == ref
  np.testing.assert_array_equal(applies, applies.transpose(0, 2, 1))
  np.testing.assert_array_equal(verdict, verdict.transpose(0, 2, 1))


def test_bad_input():
  with pytest.raises(InputError, match="same size"):
    short_rule_matrix([["a", "b"], ["c"]])
  with pytest.raises(InputError, match="no groups"):
    short_rule_matrix([])
