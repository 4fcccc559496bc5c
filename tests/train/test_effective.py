"""Tests `darling_jax/train/effective.py`: the config a run saves is the config that ran."""

import dataclasses
import pathlib

import pytest

from darling_jax.errors import InputError
from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import load_config_file
from darling_jax.train.effective import effective_config, sampler_is_filtered
from darling_jax.train.overrides import apply_overrides

REPO = pathlib.Path(__file__).resolve().parents[2]


def _smoke(*overrides):
  return apply_overrides(load_config_file(REPO / "configs/smoke.py"), list(overrides))


def test_tau_from_the_config_wins_over_the_classifier_folder():
  cfg = _smoke("update.reward.threshold=0.32")
  eff = effective_config(cfg, stop_ids=(2,), classifier_threshold=0.5)
  assert eff.update.reward.threshold == 0.32


def test_unset_tau_is_the_classifier_folders():
  cfg = _smoke("update.reward.threshold=none")
  assert cfg.update.reward.threshold is None
  eff = effective_config(cfg, stop_ids=(2,), classifier_threshold=0.41)
  assert eff.update.reward.threshold == 0.41
  # Without a classifier nothing is invented: the partition never runs.
  assert effective_config(cfg, stop_ids=(2,), classifier_threshold=None).update.reward.threshold \
      is None


def test_the_paper_recipes_pin_their_tau():
  math = load_config_file(REPO / "configs/qwen3_4b_math.py")
  chat = load_config_file(REPO / "configs/llama31_8b_wildchat.py")
  assert math.update.reward.threshold == 0.5 and chat.update.reward.threshold == 0.32
  for cfg in (math, chat):
    assert effective_config(cfg, stop_ids=(1,), classifier_threshold=0.77).update.reward \
        .threshold == cfg.update.reward.threshold


def test_stop_ids_and_loss_temperature_are_recorded():
  cfg = _smoke("sampler.temperature=0.7", "sampler.stop_ids=5")
  eff = effective_config(cfg, stop_ids=(5, 2), classifier_threshold=None)
  assert eff.sampler.stop_ids == (5, 2)
  assert eff.update.temperature == 0.7
  with pytest.raises(InputError, match="update.temperature"):
    effective_config(_smoke("sampler.temperature=0.7", "update.temperature=0.5"), stop_ids=(2,),
                     classifier_threshold=None)


@pytest.mark.parametrize("override, filtered", [
    ("sampler.top_p=1.0", False), ("sampler.top_p=0.95", True), ("sampler.top_k=50", True),
    ("sampler.min_p=0.05", True), ("sampler.greedy=true", False)])
def test_old_logprobs_are_recomputed_exactly_when_filters_change_the_distribution(override,
                                                                                 filtered):
  cfg = _smoke(override)
  assert sampler_is_filtered(cfg.sampler) is filtered
  eff = effective_config(cfg, stop_ids=(2,), classifier_threshold=None)
  assert eff.update.recompute_old_logprobs is filtered


def test_refusing_recompute_with_filters_is_an_error():
  cfg = _smoke("sampler.top_p=0.9", "update.recompute_old_logprobs=false")
  with pytest.raises(InputError, match="recompute_old_logprobs"):
    effective_config(cfg, stop_ids=(2,), classifier_threshold=None)
  forced = effective_config(_smoke("update.recompute_old_logprobs=true"), stop_ids=(2,),
                            classifier_threshold=None)
  assert forced.update.recompute_old_logprobs is True


def test_threshold_outside_unit_interval_is_an_error():
  with pytest.raises(InputError, match="threshold"):
    RewardConfig(threshold=1.5)
  assert not sampler_is_filtered(dataclasses.replace(SamplerConfig(), top_k=3, greedy=True))
