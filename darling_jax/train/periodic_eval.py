"""Held-out evaluation during training, with the same code as `darling-jax eval`.

N samples per held-out prompt from the current policy, then:
  pass@k (k = 1, 2, 4, ... <= N) and maj@k with the run's quality function as the verifier
  (a sample "passes" when its quality is >= 0.5), mean response length; and, when the run has a
  learned classifier, NoveltyBench's distinct (greedy partition) and utility over the same samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from darling_jax.errors import InputError
from darling_jax.evaluation import evaluate_math, evaluate_novelty
from darling_jax.rewards import score_groups
from darling_jax.sampling import SamplerConfig, sample
from darling_jax.sampling.text import completion_ids
from darling_jax.train.components import DiversityScorer
from darling_jax.train.config import DiversitySource, EvalConfig
from darling_jax.train.distributed import to_host
from darling_jax.train.rollout_stage import left_pad_batch


def _threshold_quality(quality_fn):
  def passes(prompts, completions, columns):
    return (score_groups(quality_fn, prompts, completions, columns) >= 0.5).astype(np.float32)

  return passes


@dataclasses.dataclass
class EvalSet:
  """Fixed held-out prompts (the first `num_prompts` of the eval split, in file order)."""

  batch: Any  # a PromptBatch of all eval prompts

  @classmethod
  def build(cls, iterator, num_prompts: int | None = None) -> "EvalSet":
    try:
      return cls(next(iterator))
    except StopIteration:
      raise InputError("eval.num_prompts", f"the eval split has fewer than {num_prompts} prompts "
                       "(within data.max_prompt_tokens); lower eval.num_prompts") from None


def run_eval(*, eval_set: EvalSet, graphdef, params, tokenizer, stop_ids, max_new_tokens: int,
             config: EvalConfig, quality_fn, diversity: DiversityScorer | None, key: jax.Array,
             mesh=None) -> tuple[dict[str, Any], list[list[str]]]:
  pb = eval_set.batch
  ids, mask = left_pad_batch(pb.prompt_ids_BxL, pb.prompt_lengths_B, tokenizer.pad_token_id)
  cfg = SamplerConfig(max_new_tokens=max_new_tokens, temperature=config.temperature,
                      top_p=config.top_p, stop_ids=stop_ids, num_samples=config.num_samples)
  rollouts = sample(graphdef, params, ids, mask, key, cfg, pad_id=tokenizer.pad_token_id,
                    mesh=mesh)
  tokens, lengths = to_host(rollouts.tokens), to_host(rollouts.lengths)
  B, G, _ = tokens.shape
  texts = [[tokenizer.decode(completion_ids(tokens[b, g], int(lengths[b, g]), stop_ids))
            for g in range(G)] for b in range(B)]
  answers = pb.columns.get("answer", [None] * B)
  math = evaluate_math(texts, answers, prompts=pb.prompts, columns=pb.columns,
                       quality=_threshold_quality(quality_fn), lengths=lengths.tolist(),
                       maj=False)
  summary = {k: v for k, v in math.summary.items() if isinstance(v, (int, float))}
  summary.update({f"pass@{k}": v for k, v in math.summary["pass@k"].items()})
  summary["quality"] = float(score_groups(quality_fn, pb.prompts, texts, pb.columns).mean())
  if diversity is not None and diversity.source is DiversitySource.CLASSIFIER:
    nov = evaluate_novelty([str(p) for p in pb.prompts], texts,
                           equivalence=lambda _p, gens: diversity.equivalence(gens),
                           threshold=diversity.threshold, quality=quality_fn,
                           columns=pb.columns)
    summary.update({f"novelty_{k}": v for k, v in nov.summary.items()
                    if isinstance(v, (int, float))})
  return summary, texts
