"""pass@k and maj@k against brute-force enumeration of all k-subsets, and exact rationals."""

import collections
import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.evaluation.pass_at_k import maj_at_k, pass_at_k, powers_of_two


def brute_pass(n, c, k):
  """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
  hits = sum(any(i < c for i in subset) for subset in itertools.combinations(range(n), k))
  return Fraction(hits, math.comb(n, k))


def brute_maj(keys, correct, k):
  """Majority-vote score averaged over all k-subsets; ties split evenly; None never votes."""
  total = Fraction(0)
  for subset in itertools.combinations(range(len(keys)), k):
    votes = collections.Counter((keys[i], correct[i]) for i in subset if keys[i] is not None)
    if votes:
      top = max(votes.values())
      tied = [cls for cls, v in votes.items() if v == top]
      total += Fraction(sum(ok for _, ok in tied), len(tied))
  return total / math.comb(len(keys), k)


def test_pass_at_k_equals_brute_force_exactly():
  for n in range(1, 11):
    for c in range(n + 1):
      for k in range(1, n + 1):
        # Correctly rounded: the float nearest the exact rational, bit for bit.
        assert pass_at_k(n, c, k) == float(brute_pass(n, c, k)), (n, c, k)


@pytest.mark.parametrize("n", [256, 1024])
def test_pass_at_k_exact_for_large_n(n):
  rng = random.Random(n)
  cases = [(0, 1), (1, 1), (1, n // 2), (n - 1, 1), (n, 7)] + [
      (rng.randrange(n + 1), 1 << rng.randrange(n.bit_length())) for _ in range(40)]
  for c, k in cases:
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == float(exact), (n, c, k)
  # Tiny values keep full relative precision (no 1 - (1 - eps) cancellation).
  assert pass_at_k(n, 1, 1) == 1 / n
  # The product form of Chen et al. agrees to float64 precision.
  for c, k in cases:
    chen = 1.0 if n - c < k else 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(chen, rel=1e-9, abs=1e-15)


def test_pass_at_k_is_monotone_in_k():
  values = [pass_at_k(256, 3, k) for k in powers_of_two(256)]
  assert values == sorted(values) and values[-1] == 1.0


def test_powers_of_two():
  assert powers_of_two(1) == [1]
  assert powers_of_two(10) == [1, 2, 4, 8]
  assert powers_of_two(256)[-1] == 256 and len(powers_of_two(256)) == 9


def test_bad_arguments():
  for args in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1), (4.0, 1, 1), (True, 1, 1)]:
    with pytest.raises(InputError):
      pass_at_k(*args)


def test_maj_at_k_equals_brute_force():
  rng = random.Random(0)
  for _ in range(100):
    n = rng.randint(1, 10)
    keys = [rng.choice([None, "a", "b", "c", "d"]) for _ in range(n)]
    # "a" is always right, "b" is judged right for some samples only: two classes of one key.
    correct = [key == "a" or (key == "b" and rng.random() < 0.4) for key in keys]
    for k in range(1, n + 1):
      assert maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj(keys, correct, k)),
                                                         abs=1e-13), (keys, correct, k)


def test_maj_at_k_hand_cases():
  # Tie between one right and one wrong answer: half credit.
  assert maj_at_k(["x", "y"], [True, False], 2) == pytest.approx(0.5)
  # Nobody answers: 0. Abstainers do not vote, so a lone right answer wins.
  assert maj_at_k([None, None], [False, False], 2) == 0.0
  assert maj_at_k([None, None, "7"], [False, False, True], 3) == pytest.approx(1.0)
  # k = 1: the fraction of samples that answer correctly.
  assert maj_at_k(["1", "2", "1", None], [True, False, True, False], 1) == pytest.approx(0.5)


def test_maj_at_k_large_n_endpoints():
  rng = random.Random(1)
  keys = [rng.choice(["1", "2", "3", None]) for _ in range(256)]
  keys[:100] = ["1"] * 100  # "1" is the clear majority and the right answer
  correct = [key == "1" for key in keys]
  assert maj_at_k(keys, correct, 256) == pytest.approx(1.0, abs=1e-12)  # the only subset
  assert maj_at_k(keys, correct, 1) == pytest.approx(sum(correct) / 256, abs=1e-12)
  wrong = [key == "2" for key in keys]
  assert maj_at_k(keys, wrong, 256) == pytest.approx(0.0, abs=1e-12)
  mid = [maj_at_k(keys, correct, k) for k in (2, 8, 32)]
  assert all(0.0 < v < 1.0 for v in mid) and mid == sorted(mid)


def test_maj_at_k_mismatched_lengths():
  with pytest.raises(InputError, match="2 answer keys but 1"):
    maj_at_k(["a", "b"], [True], 1)
