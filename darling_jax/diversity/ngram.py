"""Lexical n-gram diversity: the "quality x 4-gram" baseline of the paper's ablation.

Axis legend: B groups (prompts), G rollouts per group.

Host-side (it works on text, before anything is put on a device):

  div_ngram(y_i) = |distinct n-grams of y_i that occur in no other rollout of its group|
                   / (number of n-grams of y_i, counted with repetition) = (L_i - n + 1)

Tokens are whitespace-separated words (`str.split()`, case-sensitive), as in the reference code.

Choices (both follow the reference code, github.com/facebookresearch/darling):
  * The denominator counts ALL n-gram positions (L_i - n + 1), not distinct n-grams. A response
    that repeats its own unique phrase does not raise its numerator but does raise its denominator,
    so self-repetition is penalised rather than rewarded.
  * A response shorter than n words (L_i < n, including the empty string) has no n-grams and scores
    0: there is nothing novel in it, and scoring it 1 would reward the empty answer.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from darling_jax.errors import InputError


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(words[k : k + n]) for k in range(len(words) - n + 1)]


def _group_scores(group: Sequence[str], n: int) -> list[float]:
  grams = [_ngrams(text.split(), n) for text in group]
  distinct = [set(g) for g in grams]
  # In how many rollouts of the group each n-gram occurs (once per rollout).
  rollouts_with = Counter(gram for s in distinct for gram in s)
  scores = []
  for positions, own in zip(grams, distinct):
    if not positions:
      scores.append(0.0)
      continue
    unique = sum(1 for gram in own if rollouts_with[gram] == 1)
    scores.append(unique / len(positions))
  return scores


def ngram_diversity(completions: Sequence[Sequence[str]], n: int = 4) -> np.ndarray:
  """Per-rollout lexical diversity within each group (see the module docstring for the formula).

  Args:
    completions: B groups of G completion texts each (every group the same size G).
    n: n-gram order (4 in the paper).

  Returns:
    float32 array [B, G] in [0, 1].

  Raises:
    InputError: if n < 1, a group is ragged, or an entry is not a string.
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise InputError("ngram_diversity: n", f"must be a positive int, got {n!r}")
  if isinstance(completions, str):
    raise InputError(
        "ngram_diversity: completions", "expected B groups of G strings, got one string"
    )
  groups = [list(g) for g in completions]
  if not groups:
    return np.zeros((0, 0), dtype=np.float32)
  g = len(groups[0])
  for b, group in enumerate(groups):
    where = f"ngram_diversity: completions[{b}]"
    if isinstance(completions[b], str):
      raise InputError(where, "expected a group of strings, got a string")
    if len(group) != g:
      raise InputError(where, f"has {len(group)} rollouts, group 0 has {g}")
    for i, text in enumerate(group):
      if not isinstance(text, str):
        raise InputError(f"{where}[{i}]", f"expected str, got {type(text).__name__}")
  scores = [_group_scores(group, n) for group in groups]
  return np.asarray(scores, dtype=np.float32).reshape(len(groups), g)
