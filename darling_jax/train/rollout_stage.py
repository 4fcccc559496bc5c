"""One step's data: prompts -> rollouts -> texts -> quality, diversity, reference log-probs.

Axis letters: B prompts, G rollouts per prompt, P prompt length, N response length.

The device work (sampling, classifier, reference forward) is jitted; the host work (verifiers,
user quality functions, the classifier's tokenisation) runs on this host's groups only and is then
all-gathered, so a group of G rollouts is always scored whole, on one host. Each stage is timed.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from darling_jax.rewards import score_groups
from darling_jax.rl.state import UpdateBatch
from darling_jax.sampling import sample
from darling_jax.sampling.text import completion_ids
from darling_jax.train.components import DiversityScorer
from darling_jax.train.config import DiversitySource
from darling_jax.train.distributed import allgather_rows, local_rows, to_host


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
  # (prompt lengths [B], response lengths [B, G]) on the host, for the update's packing plan
  lengths: tuple[np.ndarray, np.ndarray] | None = None


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
    tokens = to_host(rollouts.tokens)
    lengths = to_host(rollouts.lengths)
  B, G, N = tokens.shape
  mine = local_rows(B)
  texts = [[tokenizer.decode(completion_ids(tokens[b, g], int(lengths[b, g]), stop_ids))
            for g in range(G)] for b in range(B)]
  cols = {k: list(v)[mine] for k, v in prompt_batch.columns.items()}
  with timer("quality"):
    quality = allgather_rows(score_groups(quality_fn, list(prompt_batch.prompts)[mine],
                                          texts[mine], cols))
  equiv = div = None
  if diversity is not None:
    with timer("classifier"):
      if diversity.source is DiversitySource.CLASSIFIER:
        equiv = allgather_rows(diversity.equivalence(texts[mine]))
      else:
        div = allgather_rows(diversity.lexical(texts[mine]))
  replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
  put = lambda x: None if x is None else jax.device_put(np.asarray(x), replicated)  # noqa: E731
  batch = UpdateBatch(
      prompt_ids=put(ids), prompt_mask=put(mask),
      response_ids=rollouts.tokens, response_mask=rollouts.mask,
      old_logprobs=rollouts.logprobs, quality=put(quality), equiv_probs=put(equiv),
      diversity=put(div))
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
  stats = getattr(quality_fn, "last_stats", None)  # verifiers: answers past their time limits
  if stats is not None:
    metrics["quality_timed_out"] = float(stats.timed_out)
    metrics["quality_unfinished"] = float(stats.unfinished)
  prompt_lengths = np.asarray(mask).sum(axis=1)
  return StepData(batch=batch, texts=texts, prompts=list(prompt_batch.prompts), metrics=metrics,
                  lengths=(prompt_lengths, np.asarray(lengths)))
