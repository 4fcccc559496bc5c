"""Lexical n-gram diversity: hand-computed values."""

import numpy as np
import pytest

from darling_jax.diversity import ngram_diversity
from darling_jax.errors import InputError


def test_shared_and_unique_four_grams():
  group = [
      "the cat sat on the mat",  # 3 four-grams, only "sat on the mat" is its own
      "the cat sat on the carpet",  # 3 four-grams, only "sat on the carpet" is its own
      "elephants are large gray animals",  # 2 four-grams, both its own
  ]
  out = ngram_diversity([group, list(reversed(group))], n=4)
  assert out.shape == (2, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, [[1 / 3, 1 / 3, 1.0], [1.0, 1 / 3, 1 / 3]], rtol=1e-6)


def test_denominator_counts_repeated_ngrams():
  # 8 words -> 5 four-gram positions, 4 distinct (abcd twice), all absent from the other rollout.
  out = ngram_diversity([["a b c d a b c d", "x y z w"]], n=4)
  np.testing.assert_allclose(out, [[4 / 5, 1.0]], rtol=1e-6)


def test_short_and_empty_texts_score_zero():
  out = ngram_diversity([["a b c", "", "a b c d"]], n=4)
  np.testing.assert_array_equal(out, [[0.0, 0.0, 1.0]])


def test_identical_rollouts_score_zero_and_case_matters():
  out = ngram_diversity([["One two three four", "one two three four", "one two three four"]])
  np.testing.assert_array_equal(out, [[1.0, 0.0, 0.0]])


def test_unigrams():
  out = ngram_diversity([["a b", "b c"]], n=1)  # a is unique to 0, c to 1; b is shared
  np.testing.assert_allclose(out, [[0.5, 0.5]])


def test_bad_input_is_reported():
  with pytest.raises(InputError, match="completions\\[1\\]"):
    ngram_diversity([["a", "b"], ["c"]])
  with pytest.raises(InputError, match="n"):
    ngram_diversity([["a", "b"]], n=0)
  with pytest.raises(InputError, match="expected str"):
    ngram_diversity([["a", 3]])
  with pytest.raises(InputError, match="string"):
    ngram_diversity("not groups")
