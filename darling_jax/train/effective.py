"""The effective config: every value a run derives, written back into the config it saves.

A config file may leave some values to the run: the stop ids (the tokenizer's end-of-turn ids are
added to `sampler.stop_ids`), the loss temperature (`update.temperature` scores the distribution
pi_old was sampled from, so it is `sampler.temperature`), tau (`update.reward.threshold` unset:
the classifier folder's calibrated threshold) and where pi_old comes from
(`update.recompute_old_logprobs` unset: recomputed by a trainer forward exactly when a sampling
filter makes the sampler's distribution differ from the policy's softmax). `effective_config`
resolves them once; the trainer runs, saves (`config.json`, checkpoint meta) and logs that config,
so the saved config is the config that ran.
"""

from __future__ import annotations

import dataclasses

from darling_jax.errors import InputError
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import TrainConfig


def sampler_is_filtered(sampler: SamplerConfig) -> bool:
  """True when top-k / top-p / min-p change the sampled distribution away from softmax(z / T)."""
  return not sampler.greedy and (sampler.top_k > 0 or sampler.top_p < 1.0 or sampler.min_p > 0.0)


def effective_config(config: TrainConfig, *, stop_ids: tuple[int, ...],
                     classifier_threshold: float | None) -> TrainConfig:
  """`config` with the run-derived values filled in (module docstring).

  Args:
    stop_ids: the sampler's stop ids after adding the tokenizer's (config's first, in order).
    classifier_threshold: the loaded classifier's calibrated tau, or None without a classifier.
  """
  sampler = dataclasses.replace(config.sampler, stop_ids=tuple(stop_ids))
  update = config.update
  if update.temperature not in (1.0, sampler.temperature):
    raise InputError("update.temperature", f"is {update.temperature} but the rollouts are sampled "
                     f"at sampler.temperature={sampler.temperature}; the loss must score the same "
                     "tempered distribution (leave update.temperature unset)")
  reward = update.reward
  if reward.threshold is None and classifier_threshold is not None:
    reward = dataclasses.replace(reward, threshold=float(classifier_threshold))
  recompute = update.recompute_old_logprobs
  if recompute is None:
    recompute = sampler_is_filtered(sampler)
  elif not recompute and sampler_is_filtered(sampler):
    raise InputError("update.recompute_old_logprobs", "is false but sampler top_k/top_p/min_p "
                     "filter the distribution: the sampler's log-probs are then not log pi_old "
                     "and the PPO ratio would be biased (leave it unset or set it true)")
  update = dataclasses.replace(update, temperature=sampler.temperature, reward=reward,
                               recompute_old_logprobs=recompute)
  return dataclasses.replace(config, sampler=sampler, update=update)
