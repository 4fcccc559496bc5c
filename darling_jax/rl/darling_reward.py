"""Quality + equivalence -> partition -> diversity -> fused reward -> advantage, in jitted code.

Axis letters: B groups (prompts), G rollouts per group.

  equiv_ij = p_ij > tau                                     (darling.md 1.2; tau = `threshold`)
  classes  = connected components of equiv (union-find)    (1.3, the training partition)
  div_i    = max((G - |class(i)|) / (G - 1), floor)         (1.4)
  r_i      = fuse(q_i, div_i)                               (1.5, q * div by default)
  A_i      = r_i - mean_group(r) [/ std]                    (1.6)

The diversity may instead come precomputed ([B, G], e.g. the lexical 4-gram baseline or a user's
plug-in); then the partition is skipped.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math

import chex
import jax.numpy as jnp
from jaxtyping import Array, Float

from darling_jax.diversity.partition import (
    diversity_scores,
    equivalence_from_probs,
    num_classes,
    union_find_classes,
)
from darling_jax.errors import InputError, parse_enum
from darling_jax.rl.advantages import ScaleRewards, group_advantages
from darling_jax.rl.fusion import Fusion, FusionConfig, fuse


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """How a group's quality and equivalence turn into advantages (paper defaults)."""

  # tau: pairs with P(similar) > tau are equivalent (the chat recipe's ModernBERT: 0.32, math:
  # 0.5). None: the classifier folder's calibrated threshold (the trainer resolves it and records
  # the value in the run's saved config).
  threshold: float | None = None
  diversity_floor: float = 0.1  # the paper's Norm(.): no rollout's diversity falls below 0.1
  fusion: FusionConfig = FusionConfig()  # q * div (DARLING); QUALITY_ONLY is plain GRPO
  scale_rewards: ScaleRewards = ScaleRewards.NONE  # Dr.GRPO: mean-centred, no std division
  scale_eps: float = 1e-6  # added to the std when scale_rewards divides by it

  def __post_init__(self):
    object.__setattr__(self, "scale_rewards", parse_enum(ScaleRewards, self.scale_rewards,
                                                         "reward.scale_rewards"))
    if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                           and 0.0 <= self.threshold <= 1.0):
      raise InputError("reward.threshold", f"must be in [0, 1], got {self.threshold!r}")
    if not (isinstance(self.diversity_floor, (int, float)) and 0.0 <= self.diversity_floor <= 1.0):
      raise InputError("reward.diversity_floor", f"must be in [0, 1], got {self.diversity_floor!r}")
    if not (isinstance(self.scale_eps, (int, float)) and math.isfinite(self.scale_eps)
            and self.scale_eps > 0):
      raise InputError("reward.scale_eps", f"must be a positive number, got {self.scale_eps!r}")


def darling_advantages(
    quality_BxG: Float[Array, "B G"],
    config: RewardConfig,
    equiv_probs_BxGxG: Float[Array, "B G G"] | None = None,
    diversity_BxG: Float[Array, "B G"] | None = None,
) -> tuple[Float[Array, "B G"], dict[str, Array]]:
  """Advantages [B, G] and the step's reward metrics (scalars).

  Exactly one of `equiv_probs_BxGxG` (a learned classifier's pair probabilities) and
  `diversity_BxG` (a precomputed plug-in diversity) drives the diversity term; with
  Fusion.QUALITY_ONLY either may be given only to measure diversity.
  """
  chex.assert_rank(quality_BxG, 2)
  q_BxG = quality_BxG.astype(jnp.float32)
  G = q_BxG.shape[1]
  metrics: dict[str, Array] = {}
  if equiv_probs_BxGxG is not None:
    chex.assert_shape(equiv_probs_BxGxG, (q_BxG.shape[0], G, G))
    if config.threshold is None:
      raise InputError("update.reward.threshold", "is unset: give tau, or let the trainer take "
                       "the classifier folder's calibrated threshold")
    classes_BxG = union_find_classes(equivalence_from_probs(equiv_probs_BxGxG, config.threshold))
    div_BxG = diversity_scores(classes_BxG, floor=config.diversity_floor)
    n_classes_B = num_classes(classes_BxG).astype(jnp.float32)
    metrics["classes_per_group"] = jnp.mean(n_classes_B)
    metrics["frac_groups_one_class"] = jnp.mean((n_classes_B == 1).astype(jnp.float32))
  elif diversity_BxG is not None:
    chex.assert_equal_shape([diversity_BxG, q_BxG])
    div_BxG = diversity_BxG.astype(jnp.float32)
  elif config.fusion.mode is Fusion.QUALITY_ONLY:
    div_BxG = jnp.ones_like(q_BxG)
  else:
    raise InputError("reward", f"fusion {config.fusion.mode.value!r} needs equivalence "
                     "probabilities or a precomputed diversity")
  reward_BxG = fuse(q_BxG, div_BxG, config.fusion)
  adv_BxG = group_advantages(reward_BxG, config.scale_rewards, config.scale_eps)
  metrics.update(
      quality=jnp.mean(q_BxG),
      diversity=jnp.mean(div_BxG),
      reward=jnp.mean(reward_BxG),
      reward_std=jnp.std(reward_BxG),
      adv_abs_mean=jnp.mean(jnp.abs(adv_BxG)),
      adv_std=jnp.std(adv_BxG),
      adv_min=jnp.min(adv_BxG),
      adv_max=jnp.max(adv_BxG),
      frac_groups_zero_adv=jnp.mean(jnp.all(adv_BxG == 0, axis=-1).astype(jnp.float32)),
  )
  return adv_BxG, metrics
