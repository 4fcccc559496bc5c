"""The short-answer rule: pairs of very short answers are judged by unigram overlap, not the model.

DARLING (and NoveltyBench's `maybe_test_equality`) skip the classifier when both answers have at
most `max_words` (5) whitespace-separated words: with w_i = lower(y_i).split(),

    equivalent(y_i, y_j)  iff  2 * |set(w_i) & set(w_j)| >= max(|w_i|, |w_j|).

A classifier fine-tuned on multi-paragraph answers is unreliable on "Paris." vs "paris", which is
exactly where exact lexical overlap is reliable. Lengths count repeated words; the overlap counts
distinct words, as in the reference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from darling_jax.errors import InputError

MAX_WORDS = 5  # the reference's threshold: both answers must have <= 5 words


def words(text: str) -> list[str]:
  """Lower-cased whitespace tokens (the rule's notion of a word)."""
  return text.strip().lower().split()


def short_pair_verdict(a: str, b: str, max_words: int = MAX_WORDS) -> bool | None:
  """True/False when both answers are short (the rule decides), None when the model must."""
  wa, wb = words(a), words(b)
  longest = max(len(wa), len(wb))
  if longest > max_words:
    return None
  return 2 * len(set(wa) & set(wb)) >= longest


def short_rule_matrix(
    groups: Sequence[Sequence[str]], max_words: int = MAX_WORDS
) -> tuple[np.ndarray, np.ndarray]:
  """The rule over every pair of every group.

  Args:
    groups: B groups of G answers each.
    max_words: the rule applies when both answers have at most this many words.

  Returns:
    (applies_BxGxG bool, equivalent_BxGxG bool): where the rule decides a pair and its verdict.
    Both are symmetric; the diagonal is (True, True) only for short answers, as the rule gives.
  """
  if not groups:
    raise InputError("groups", "no groups given")
  g = len(groups[0])
  if any(len(grp) != g for grp in groups):
    raise InputError("groups", "every group must have the same size, got "
                     f"{[len(x) for x in groups]}")
  if max_words < 0:
    raise InputError("max_words", f"must be >= 0, got {max_words}")
  applies_BxGxG = np.zeros((len(groups), g, g), bool)
  equivalent_BxGxG = np.zeros((len(groups), g, g), bool)
  for b, grp in enumerate(groups):
    toks = [words(t) for t in grp]
    short = [len(t) <= max_words for t in toks]
    sets = [set(t) for t in toks]
    for i in range(g):
      if not short[i]:
        continue
      for j in range(i, g):
        if short[j]:
          longest = max(len(toks[i]), len(toks[j]))
          verdict = 2 * len(sets[i] & sets[j]) >= longest
          applies_BxGxG[b, i, j] = applies_BxGxG[b, j, i] = True
          equivalent_BxGxG[b, i, j] = equivalent_BxGxG[b, j, i] = verdict
  return applies_BxGxG, equivalent_BxGxG
