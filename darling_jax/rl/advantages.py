"""Group-relative advantages (GRPO / Dr.GRPO) from per-rollout rewards.

Axis legend: B groups (prompts), G rollouts per group.

  A_i = r_i - mean_group(r)                                  ScaleRewards.NONE  (paper default)
  A_i = (r_i - mean_group(r)) / (std_group(r) + eps)         ScaleRewards.GROUP (classic GRPO)
  A_i = (r_i - mean_group(r)) / (std_batch(r) + eps)         ScaleRewards.BATCH

The names follow TRL's `scale_rewards` ("none" / "group" / "batch"). Both TRL and verl use
torch.std, i.e. the unbiased (ddof = 1) standard deviation; the batch std is taken over all B * G
rewards around the batch mean, while the centring always uses the group mean. eps: verl's GRPO
uses 1e-6 (the default here, since the paper's reference code is a verl fork); TRL uses 1e-4.

Validity mask: padding rollouts (valid = False) are excluded from every mean and std and get
advantage 0. A group with one valid rollout has std 0 (ddof = 1 would divide by zero) and
advantage 0.
"""

from __future__ import annotations

import enum

import chex
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from darling_jax.errors import parse_enum


class ScaleRewards(enum.Enum):
  """How centred rewards are scaled (TRL's `scale_rewards`)."""

  NONE = "none"
  GROUP = "group"
  BATCH = "batch"


def _mask(x: Array, valid: Bool[Array, "B G"] | None) -> Float[Array, "B G"]:
  if valid is None:
    return jnp.ones(x.shape, dtype=jnp.float32)
  chex.assert_equal_shape([x, valid])
  return valid.astype(jnp.float32)


def group_min(
    x_BxG: Float[Array, "B G"], valid: Bool[Array, "B G"] | None = None
) -> Float[Array, "B 1"]:
  """Minimum over the valid members of each group (0 for a group with none)."""
  m_BxG = _mask(x_BxG, valid)
  lowest_Bx1 = jnp.min(jnp.where(m_BxG > 0, x_BxG, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(jnp.isfinite(lowest_Bx1), lowest_Bx1, 0.0)


def group_mean(
    x_BxG: Float[Array, "B G"], valid: Bool[Array, "B G"] | None = None
) -> Float[Array, "B 1"]:
  """Mean over the valid members of each group (0 for a group with none).

  Computed as min + mean(x - min) so that a constant group gives exactly its value back; otherwise
  float32 rounding leaves r - mean(r) at ~1e-8 instead of 0, which a std scaling (or z-score)
  would blow up into an O(1) advantage from noise.
  """
  m_BxG = _mask(x_BxG, valid)
  ref_Bx1 = group_min(x_BxG, valid)
  count_Bx1 = jnp.sum(m_BxG, axis=-1, keepdims=True)
  total_Bx1 = jnp.sum(jnp.where(m_BxG > 0, x_BxG - ref_Bx1, 0.0), axis=-1, keepdims=True)
  return ref_Bx1 + total_Bx1 / jnp.maximum(count_Bx1, 1.0)


def group_std(
    x_BxG: Float[Array, "B G"], valid: Bool[Array, "B G"] | None = None, ddof: int = 1
) -> Float[Array, "B 1"]:
  """Standard deviation over the valid members of each group; 0 where count <= ddof.

  Exactly 0 for a constant group (see `group_mean`).
  """
  m_BxG = _mask(x_BxG, valid)
  count_Bx1 = jnp.sum(m_BxG, axis=-1, keepdims=True)
  dev_BxG = jnp.where(m_BxG > 0, x_BxG - group_mean(x_BxG, valid), 0.0)
  var_Bx1 = jnp.sum(dev_BxG * dev_BxG, axis=-1, keepdims=True) / jnp.maximum(count_Bx1 - ddof, 1.0)
  return jnp.where(count_Bx1 > ddof, jnp.sqrt(var_Bx1), 0.0)


def batch_std(
    x_BxG: Float[Array, "B G"], valid: Bool[Array, "B G"] | None = None, ddof: int = 1
) -> Float[Array, ""]:
  """Standard deviation of all valid entries of the batch around the batch mean."""
  flat_1xN = x_BxG.reshape(1, -1)
  flat_valid = None if valid is None else valid.reshape(1, -1)
  return group_std(flat_1xN, flat_valid, ddof)[0, 0]


def group_advantages(
    reward_BxG: Float[Array, "B G"],
    scale: ScaleRewards | str = ScaleRewards.NONE,
    eps: float = 1e-6,
    valid: Bool[Array, "B G"] | None = None,
) -> Float[Array, "B G"]:
  """Per-rollout advantages; see the module docstring for the formulas.

  Args:
    reward_BxG: fused reward r (e.g. q * div).
    scale: ScaleRewards (or its string value "none" / "group" / "batch").
    eps: added to the std before dividing.
    valid: optional [B, G] mask of real rollouts.

  Returns:
    float32 [B, G]; 0 at padding rollouts.
  """
  scale = parse_enum(ScaleRewards, scale, "group_advantages: scale")
  chex.assert_rank(reward_BxG, 2)
  r_BxG = reward_BxG.astype(jnp.float32)
  adv_BxG = r_BxG - group_mean(r_BxG, valid)
  match scale:
    case ScaleRewards.NONE:
      pass
    case ScaleRewards.GROUP:
      adv_BxG = adv_BxG / (group_std(r_BxG, valid) + eps)
    case ScaleRewards.BATCH:
      adv_BxG = adv_BxG / (batch_std(r_BxG, valid) + eps)
  return jnp.where(_mask(r_BxG, valid) > 0, adv_BxG, 0.0)
