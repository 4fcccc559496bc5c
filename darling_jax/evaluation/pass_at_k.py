"""Unbiased pass@k and maj@k estimators from N samples per problem.

pass@k. With n samples of which c are correct, the probability that a uniformly random k-subset
contains at least one correct sample is

    pass@k = 1 - C(n - c, k) / C(n, k)            (Chen et al. 2021; DARLING section 3)

the unbiased estimator of the chance that k fresh samples solve the problem. Computed here as
(C(n, k) - C(n - c, k)) / C(n, k) in exact integer arithmetic, then ONE correctly rounded division
(Python's int / int): the result is the float nearest the exact rational value for every n (no
cancellation when pass@k is tiny, no overflow at n = 1024 where C(n, n/2) ~ 1e306).

maj@k. Each sample has an answer key (its normalised final answer, or None when it gives none) and
a correctness bit. Samples with the same (key, correct) form an answer class; None never votes.
For one k-subset, the majority answer is the class with the most members in the subset; a tie
between t classes is broken uniformly at random (so it scores (#correct tied classes) / t), and a
subset in which no sample votes scores 0. maj@k is the expectation of that score over all C(n, k)
subsets: the unbiased estimator of the majority-vote accuracy of k fresh samples, by the same
argument as pass@k. (Keying classes on the correctness bit too means a verifier that calls two
spellings of one answer differently never merges them.)

Exact computation of maj@k without enumerating subsets: by linearity, over every correct class j
and every count x >= 1 of its members in the subset,

    maj@k = sum_j sum_x C(m_j, x) * sum_{draws of the rest: k - x samples, every other class < x
            or = x} prod_i C(m_i, y_i) / (1 + #{i : y_i = x})  /  C(n, k)

The inner sum is the z^(k-x) coefficient of a product of per-class polynomials, tracking in a
second axis how many other classes tie at x. Classes with fewer than x members can never tie and
merge (Vandermonde) with the non-voters into a single binomial factor, so only the <= n / x classes
with at least x members are multiplied one by one. Coefficients are binomial probabilities with
p = k / n (C(m, y) p^y (1-p)^(m-y)), which changes every term of the sum by the same factor
p^k (1-p)^(n-k) and keeps all numbers in [0, 1], so float64 neither overflows nor cancels (all
terms are positive); weights below `NEGLIGIBLE` (the far binomial tails) are skipped. Agrees with
brute-force enumeration to ~1e-15.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Hashable, Sequence

import numpy as np

from darling_jax.errors import InputError

# Binomial weights below this are skipped in maj@k. Every term of the sum is a product of weights
# <= 1, so a skipped one is < 1e-24; even ~n^3 of them, divided by the normaliser (the binomial pmf
# at its mean, >= ~1 / (3 sqrt(n))), move the result by far less than 1e-12.
NEGLIGIBLE = 1e-24


def _check_nck(n: int, c: int, k: int) -> None:
  for name, value in (("n", n), ("c", c), ("k", k)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise InputError(f"pass_at_k {name}", f"must be an int, got {value!r}")
  if not (0 <= c <= n and 1 <= k <= n):
    raise InputError("pass_at_k", f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), correctly rounded (see the module docstring).

  Args:
    n: samples drawn for the problem.
    c: how many of them are correct.
    k: subset size, 1 <= k <= n.
  """
  _check_nck(n, c, k)
  n, c, k = int(n), int(c), int(k)
  if n - c < k:
    return 1.0  # every k-subset holds a correct sample
  total = math.comb(n, k)
  return (total - math.comb(n - c, k)) / total


def powers_of_two(n: int) -> list[int]:
  """k = 1, 2, 4, ... <= n: the k's reported for n samples."""
  if n < 1:
    raise InputError("num_samples", f"must be >= 1, got {n}")
  return [1 << i for i in range(n.bit_length()) if 1 << i <= n]


@functools.lru_cache(maxsize=4096)
def _log_binom_pmf(m: int, p: float) -> np.ndarray:
  """log of C(m, y) p^y (1-p)^(m-y) for y = 0..m (-inf where it is exactly 0); read-only."""
  y = np.arange(m + 1, dtype=np.float64)
  log_comb = math.lgamma(m + 1) - np.array([math.lgamma(v + 1) + math.lgamma(m - v + 1)
                                             for v in range(m + 1)])
  log_p = y * math.log(p) if p > 0 else np.where(y > 0, -np.inf, 0.0)
  log_q = (m - y) * math.log1p(-p) if p < 1 else np.where(m - y > 0, -np.inf, 0.0)
  out = log_comb + log_p + log_q
  out.setflags(write=False)
  return out


@functools.lru_cache(maxsize=4096)
def _binom_pmf(m: int, p: float) -> np.ndarray:
  out = np.exp(_log_binom_pmf(m, p))
  out.setflags(write=False)
  return out


def answer_classes(keys: Sequence[Hashable | None], correct: Sequence[bool]
                   ) -> tuple[list[int], list[bool], int]:
  """(class sizes, class correctness, number of non-voting samples) of one problem's samples."""
  if len(keys) != len(correct):
    raise InputError("maj_at_k", f"{len(keys)} answer keys but {len(correct)} correctness flags")
  counts = collections.Counter((key, bool(ok)) for key, ok in zip(keys, correct) if key is not None)
  sizes = [m for m in counts.values()]
  flags = [ok for (_, ok) in counts]
  return sizes, flags, len(keys) - sum(sizes)


def maj_at_k(keys: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
  """Unbiased maj@k over all k-subsets of one problem's n samples (see the module docstring).

  Args:
    keys: each sample's answer key (normalised final answer), None when it gives no answer.
    correct: each sample's correctness.
    k: subset size, 1 <= k <= n.
  """
  sizes, flags, num_silent = answer_classes(keys, correct)
  n = len(keys)
  _check_nck(n, 0, k)
  if not any(flags):
    return 0.0
  p = k / n
  total = 0.0
  for j, (m_j, ok) in enumerate(zip(sizes, flags)):
    if not ok:
      continue
    others = [m for i, m in enumerate(sizes) if i != j]
    pmf_j = _binom_pmf(m_j, p)
    for x in range(1, min(m_j, k) + 1):
      if pmf_j[x] > NEGLIGIBLE:
        total += pmf_j[x] * _tie_weighted_rest(others, num_silent, x, k - x, p)
  # Undo the common factor p^k (1-p)^(n-k): divide by the binomial pmf of k itself.
  return float(min(1.0, total / math.exp(_log_binom_pmf(n, p)[k])))


def _tie_weighted_rest(others: Sequence[int], num_silent: int, x: int, rest: int,
                       p: float) -> float:
  """sum over draws of `rest` samples from the other classes (each < x or = x) and the silent
  samples, of prod pmf / (1 + number of classes tied at x)."""
  big = [m for m in others if m >= x]
  small = num_silent + sum(m for m in others if m < x)
  # Classes below x and non-voters: one binomial factor (a sum of binomials with the same p).
  base = np.zeros(rest + 1)
  pmf_small = _binom_pmf(small, p)[: rest + 1]
  base[: len(pmf_small)] = pmf_small
  max_ties = min(len(big), rest // x) if x > 0 else 0
  # poly_TxS[t, s]: weight of drawing s samples so far with t classes tied at exactly x.
  poly_TxS = np.zeros((max_ties + 1, rest + 1))
  poly_TxS[0] = base
  for m in big:
    pmf = _binom_pmf(m, p)
    below = pmf[: min(x, rest + 1)]  # draws 0..x-1 of this class
    # nxt[t, s] = sum_y below[y] * poly[t, s - y], batched over t.
    nxt = np.zeros_like(poly_TxS)
    for y in np.flatnonzero(below > NEGLIGIBLE):
      nxt[:, y:] += below[y] * poly_TxS[:, : rest + 1 - y]
    if x <= rest:  # this class ties at exactly x
      nxt[1:, x:] += pmf[x] * poly_TxS[:-1, : rest + 1 - x]
    poly_TxS = nxt
  ties_T = np.arange(max_ties + 1, dtype=np.float64)
  return float(np.sum(poly_TxS[:, rest] / (1.0 + ties_T)))
