"""The quality-function protocol: input checks, output checks, the non-finite policy."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rewards.protocol import (
    QualityFn, check_batch, check_scores, function_name, score_groups)

PROMPTS = ["p0", "p1"]
COMPLETIONS = [["a", "bb", "ccc"], ["dddd", "e", ""]]


def length_quality(prompts, completions, columns):
  return np.array([[len(c) for c in group] for group in completions])


def test_plain_function_is_a_quality_fn():
  assert isinstance(length_quality, QualityFn)
  scores_BxG = score_groups(length_quality, PROMPTS, COMPLETIONS, {"answer": ["1", "2"]})
  assert scores_BxG.dtype == np.float32
  np.testing.assert_array_equal(scores_BxG, [[1, 2, 3], [4, 1, 0]])


def test_columns_reach_the_function():
  def uses_column(prompts, completions, columns):
    return np.array([[float(c == gold) for c in group]
                     for group, gold in zip(completions, columns["answer"])])
  scores_BxG = score_groups(uses_column, PROMPTS, COMPLETIONS, {"answer": ["bb", "e"]})
  np.testing.assert_array_equal(scores_BxG, [[0, 1, 0], [0, 1, 0]])


@pytest.mark.parametrize("prompts, completions, columns, where", [
    (["p"], [["a"], ["b"]], {}, "completions"),
    (["p", "q"], [["a", "b"], ["c"]], {}, "completions[1]"),
    (["p"], [["a", 3]], {}, "completions[0][1]"),
    ([b"p"], [["a"]], {}, "prompts[0]"),
    ("p", [["a"]], {}, "prompts"),
    (["p"], ["abc"], {}, "completions[0]"),
    (["p", "q"], [["a"], ["b"]], {"answer": ["1"]}, "columns['answer']"),
    (["p"], [["a"]], {"answer": "1"}, "columns['answer']"),
])
def test_bad_inputs_name_the_field(prompts, completions, columns, where):
  with pytest.raises(InputError) as e:
    check_batch(prompts, completions, columns)
  assert e.value.where == where


def test_empty_batch():
  assert check_batch([], [], {}) == (0, 0)


@pytest.mark.parametrize("returned, problem", [
    (np.zeros((2, 2)), "shape"),
    (np.zeros((3,)), "shape"),
    (np.zeros((2, 3), np.complex64), "dtype"),
    (np.array([["a"] * 3] * 2), "dtype"),
    ([[1, 2, 3], [4, 5]], "not an array"),
    (None, "dtype"),
])
def test_bad_outputs_are_errors_naming_the_function(returned, problem):
  def broken(prompts, completions, columns):
    return returned
  with pytest.raises(InputError) as e:
    score_groups(broken, PROMPTS, COMPLETIONS)
  assert "broken" in e.value.where
  assert problem in str(e.value)


def test_one_nan_becomes_zero_with_a_warning(caplog):
  def one_nan(prompts, completions, columns):
    scores = np.ones((2, 3))
    scores[1, 2] = np.nan
    return scores
  with caplog.at_level(logging.WARNING):
    scores_BxG = score_groups(one_nan, PROMPTS, COMPLETIONS)
  np.testing.assert_array_equal(scores_BxG, [[1, 1, 1], [1, 1, 0]])
  assert "one_nan" in caplog.text and "[1, 2]" in caplog.text


def test_mostly_nonfinite_is_an_error():
  def mostly_inf(prompts, completions, columns):
    return np.array([[np.inf, -np.inf, np.nan], [np.nan, 1.0, np.nan]])
  with pytest.raises(InputError, match="5 non-finite of 6"):
    score_groups(mostly_inf, PROMPTS, COMPLETIONS)


def test_float32_overflow_counts_as_nonfinite():
  scores = np.ones((2, 3))
  scores[0, 0] = 1e300  # finite in float64, inf in float32
  out = check_scores(scores, "big", 2, 3)
  assert out[0, 0] == 0.0 and np.isfinite(out).all()


def test_nonfinite_threshold_is_configurable():
  scores = np.array([[np.nan, 1.0, 1.0], [1.0, 1.0, 1.0]])
  with pytest.raises(InputError):
    check_scores(scores, "f", 2, 3, max_nonfinite_fraction=0.1)
  np.testing.assert_array_equal(
      check_scores(scores, "f", 2, 3, max_nonfinite_fraction=0.2)[0], [0, 1, 1])


def test_bool_int_and_jax_returns_are_accepted():
  for returned in (np.ones((2, 3), bool), np.ones((2, 3), np.int64), jnp.ones((2, 3))):
    out = check_scores(returned, "f", 2, 3)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.ones((2, 3)))


def test_function_name():
  class Scorer:
    name = "my_rm"

    def __call__(self, prompts, completions, columns):
      return np.zeros((len(prompts), len(completions[0])))

  class Unnamed:
    def __call__(self, prompts, completions, columns):
      return None

  assert function_name(Scorer()) == "my_rm"
  assert function_name(length_quality) == "length_quality"
  assert function_name(Unnamed()) == "test_function_name.<locals>.Unnamed"
  assert isinstance(Scorer(), QualityFn)
