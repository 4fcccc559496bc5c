"""One step's data: prompts -> rollouts -> texts -> quality, diversity, reference log-probs.

Axis letters: B prompts, G rollouts per prompt, P prompt length, N response length.

The device work (sampling, classifier, reference forward) is jitted; the host work (decoding text,
verifiers, user quality functions) runs on this host's prompts only. Each stage is timed.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from darling_jax.rewards import score_groups
from darling_jax.rl.state import UpdateBatch
from darling_jax.sampling import sample
from darling_jax.sampling.text import completion_ids
from darling_jax.train.components import DiversityScorer
from darling_jax.train.config import DiversitySource


class Timer:
  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    yield
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclasses.dataclass
class StepData:
  batch: UpdateBatch
  texts: list[list[str]]  # [B][G] completions
  prompts: list[Any]
  metrics: dict[str, float]


def left_pad_batch(prompt_ids_BxL: np.ndarray, lengths_B: np.ndarray,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """The pipeline's right-padded prompts, moved to the left (the sampler's layout)."""
  B, L = prompt_ids_BxL.shape
  ids = np.full((B, L), pad_id, np.int32)
  mask = np.zeros((B, L), bool)
  for b in range(B):
    n = int(lengths_B[b])
    ids[b, L - n:] = prompt_ids_BxL[b, :n]
    mask[b, L - n:] = True
  return ids, mask


def collect(
    *,
    prompt_batch,
    graphdef,
    sample_params,
    key: jax.Array,
    sampler_cfg,
    tokenizer,
    stop_ids: tuple[int, ...],
    quality_fn,
    diversity: DiversityScorer | None,
    ref_logprobs_fn,
    mesh,
    timer: Timer,
) -> StepData:
  """Runs the rollout stages for one batch of prompts."""
  ids, mask = left_pad_batch(prompt_batch.prompt_ids_BxL, prompt_batch.prompt_lengths_B,
                             tokenizer.pad_token_id)
  with timer("rollout"):
    rollouts = sample(graphdef, sample_params, ids, mask, key, sampler_cfg,
                      pad_id=tokenizer.pad_token_id, mesh=mesh)
    tokens = np.asarray(rollouts.tokens)
    lengths = np.asarray(rollouts.lengths)
  B, G, N = tokens.shape
  texts = [[tokenizer.decode(completion_ids(tokens[b, g], int(lengths[b, g]), stop_ids))
            for g in range(G)] for b in range(B)]
  with timer("quality"):
    quality = score_groups(quality_fn, prompt_batch.prompts, texts, prompt_batch.columns)
  equiv = div = None
  if diversity is not None:
    with timer("classifier"):
      if diversity.source is DiversitySource.CLASSIFIER:
        equiv = diversity.equivalence(texts)
      else:
        div = diversity.lexical(texts)
  batch = UpdateBatch(
      prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask),
      response_ids=rollouts.tokens, response_mask=rollouts.mask,
      old_logprobs=rollouts.logprobs, quality=jnp.asarray(quality),
      equiv_probs=None if equiv is None else jnp.asarray(equiv),
      diversity=None if div is None else jnp.asarray(div))
  if ref_logprobs_fn is not None:
    with timer("reference"):
      batch = batch.replace(ref_logprobs=ref_logprobs_fn(batch))
      jax.block_until_ready(batch.ref_logprobs)
  stopped = np.zeros((B, G), bool)
  for tid in stop_ids:
    stopped |= (np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[..., None], -1)[..., 0]
                == tid) & (lengths > 0)
  metrics = {
      "response_len_mean": float(lengths.mean()),
      "response_len_max": float(lengths.max()),
      "frac_truncated": float(1.0 - stopped.mean()),
      "prompt_len_mean": float(np.asarray(prompt_batch.prompt_lengths_B).mean()),
  }
  return StepData(batch=batch, texts=texts, prompts=list(prompt_batch.prompts), metrics=metrics)
