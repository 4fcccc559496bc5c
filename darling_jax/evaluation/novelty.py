"""NoveltyBench evaluation on in-memory generations: distinct and utility per prompt.

Axis legend: B prompts, G generations per prompt (NoveltyBench: k = G = 10, sampled at T = 1).

Protocol (DARLING section 3, NoveltyBench):
  1. An equivalence scorer gives P(y_i ~ y_j) for every pair of a prompt's generations, [B, G, G]
     (the trained pair classifier in the paper; `exact_match_equivalence` is a trivial baseline).
  2. Pairs with probability > threshold are equivalent; the generations are partitioned greedily in
     order (`darling_jax.diversity.greedy_classes`: generation i joins the first earlier class
     whose representative it is equivalent to, else opens a new class; no transitive closure).
  3. distinct = number of classes. utility, with patience p and qualities u_i (a 1..10 reward-model
     score in the paper; any quality function here):

         utility = sum_i p^i * [i opens a new class] * u_i  /  sum_i p^i,     i = 0 .. G-1

     the expected quality a user gains who reads generations in order and keeps reading the next
     with probability p, crediting only novel ones. Without a quality function u_i = 1 (utility
     then measures novelty alone).
Both are averaged over prompts in the summary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from jaxtyping import Float, Int

from darling_jax.errors import InputError

# fn(prompts [B], generations [B][G]) -> P(equivalent) [B, G, G]
EquivalenceFn = Callable[[Sequence[str], Sequence[Sequence[str]]], Any]
QualityFn = Callable[[Sequence[str], Sequence[Sequence[str]], Mapping[str, Sequence[Any]]], Any]

NOVELTYBENCH_PATIENCE = 0.8
NOVELTYBENCH_K = 10


def exact_match_equivalence(prompts: Sequence[str], generations: Sequence[Sequence[str]]
                            ) -> Float[np.ndarray, "B G G"]:
  """1.0 where two generations are equal after case folding and whitespace collapsing, else 0."""
  del prompts
  out = []
  for group in generations:
    keys = [" ".join(text.casefold().split()) for text in group]
    out.append([[float(a == b) for b in keys] for a in keys])
  return np.asarray(out, dtype=np.float32)


@functools.cache
def _greedy_partition():
  """One jitted program for threshold + greedy partition (eagerly, every loop step dispatches)."""
  import jax

  from darling_jax.diversity import equivalence_from_probs, greedy_classes

  return jax.jit(lambda probs_BxGxG, threshold: greedy_classes(
      equivalence_from_probs(probs_BxGxG, threshold)))


def novelty_metrics(classes_BxG: Int[np.ndarray, "B G"], quality_BxG: Float[np.ndarray, "B G"],
                    patience: float = NOVELTYBENCH_PATIENCE
                    ) -> tuple[Int[np.ndarray, "B"], Float[np.ndarray, "B"]]:
  """(distinct_B, utility_B) from class ids (smallest member index per class) and qualities."""
  classes_BxG = np.asarray(classes_BxG)
  quality_BxG = np.asarray(quality_BxG, dtype=np.float64)
  if classes_BxG.ndim != 2 or quality_BxG.shape != classes_BxG.shape:
    raise InputError("novelty_metrics", f"classes {classes_BxG.shape} and quality "
                                        f"{quality_BxG.shape} must both be [B, G]")
  if not 0.0 < patience <= 1.0:
    raise InputError("patience", f"must be in (0, 1], got {patience}")
  g = classes_BxG.shape[1]
  # With smallest-member ids, generation i opens a class exactly when its id is i.
  opens_BxG = classes_BxG == np.arange(g)[None, :]
  weights_1xG = patience ** np.arange(g, dtype=np.float64)[None, :]
  utility_B = np.sum(weights_1xG * opens_BxG * quality_BxG, axis=1) / np.sum(weights_1xG)
  return opens_BxG.sum(axis=1), utility_B


@dataclasses.dataclass(frozen=True)
class NoveltyEvalResult:
  """`per_prompt`: one JSON-ready dict per prompt; `summary`: means over prompts."""

  per_prompt: list[dict[str, Any]]
  summary: dict[str, Any]


def evaluate_novelty(
    prompts: Sequence[str],
    generations: Sequence[Sequence[str]],
    *,
    equivalence: EquivalenceFn = exact_match_equivalence,
    threshold: float = 0.5,
    quality: QualityFn | None = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
    patience: float = NOVELTYBENCH_PATIENCE,
) -> NoveltyEvalResult:
  """NoveltyBench distinct / utility of G generations per prompt (see the module docstring).

  Args:
    prompts: [B] prompt texts.
    generations: [B][G] generations, in sampling order (the order matters for the partition and
      for utility).
    equivalence: pair scorer -> probabilities [B, G, G] (only i < j entries are read).
    threshold: pairs with probability > threshold are equivalent.
    quality: quality function (rewards protocol) giving u_i [B, G]; None: u_i = 1.
    columns: dataset columns passed to the quality function.
    patience: p of the utility.
  """
  from darling_jax.rewards import score_groups
  from darling_jax.rewards.protocol import check_batch, function_name

  b, g = check_batch(prompts, generations, columns or {})
  if b == 0 or g == 0:
    raise InputError("generations", "need at least one prompt with at least one generation")
  probs_BxGxG = np.asarray(equivalence(prompts, generations), dtype=np.float32)
  if probs_BxGxG.shape != (b, g, g):
    raise InputError("equivalence", f"returned shape {probs_BxGxG.shape}, expected {(b, g, g)}")
  if not np.all(np.isfinite(probs_BxGxG)):
    raise InputError("equivalence", "returned non-finite probabilities")
  classes_BxG = np.asarray(_greedy_partition()(probs_BxGxG, np.float32(threshold)))
  if quality is None:
    quality_BxG = np.ones((b, g), np.float32)
  else:
    quality_BxG = score_groups(quality, prompts, generations, columns)
  distinct_B, utility_B = novelty_metrics(classes_BxG, quality_BxG, patience)
  per_prompt = [{
      "index": i, "num_generations": g, "distinct": int(distinct_B[i]),
      "utility": float(utility_B[i]), "classes": [int(c) for c in classes_BxG[i]],
      "quality": [float(q) for q in quality_BxG[i]],
  } for i in range(b)]
  summary = {
      "num_prompts": b, "num_generations": g, "distinct": float(np.mean(distinct_B)),
      "utility": float(np.mean(utility_B)), "patience": patience, "threshold": threshold,
      "quality": "none (u_i = 1)" if quality is None else function_name(quality),
  }
  return NoveltyEvalResult(per_prompt=per_prompt, summary=summary)
