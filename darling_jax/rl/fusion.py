"""Fusing quality q and diversity div into one reward per rollout.

Axis legend: B groups (prompts), G rollouts per group.

  MULTIPLICATIVE   r_i = q_i * div_i                                  (DARLING, the paper's method)
  ADDITIVE         r_i = l_q * q_i + l_d * div_i
  ZSCORE_ADDITIVE  r_i = l_q * q_hat_i + l_d * div_hat_i,  x_hat = (x - mean_grp(x)) / std_grp(x)
  QUALITY_ONLY     r_i = q_i                                          (plain GRPO)

l_q = `quality_weight`, l_d = `diversity_weight` (both 1 by default).

Z-scores use the population std (ddof = 0) of the group's valid members; where a group's std is 0
(all q equal, or all rollouts in one class, or a single valid rollout) x_hat is defined as 0: the
signal carries no ranking information, so it contributes nothing rather than dividing by 0.

`shift_quality_by_group_min` (off by default, as in the reference code): q_i <- q_i - min_group(q)
before fusing. With a reward model q can be negative, and then q * div is *more* negative for a
*more* diverse rollout; the shift makes q >= 0 within each group so diversity always helps. The
shift is applied for every mode; for ADDITIVE, ZSCORE_ADDITIVE and QUALITY_ONLY it is a per-group
constant, which group-mean centring (advantages.py) removes anyway (it only changes the batch std
used by ScaleRewards.BATCH).

Padding rollouts (valid = False) are excluded from group statistics and get reward 0.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import chex
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from darling_jax.errors import InputError, parse_enum
from darling_jax.rl.advantages import group_mean, group_min, group_std


class Fusion(enum.Enum):
  """How quality and diversity combine (see the module docstring)."""

  MULTIPLICATIVE = "multiplicative"
  ADDITIVE = "additive"
  ZSCORE_ADDITIVE = "zscore_additive"
  QUALITY_ONLY = "quality_only"


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  """Reward fusion settings; `mode` also accepts the Enum's string value."""

  mode: Fusion = Fusion.MULTIPLICATIVE
  quality_weight: float = 1.0
  diversity_weight: float = 1.0
  shift_quality_by_group_min: bool = False

  def __post_init__(self):
    object.__setattr__(self, "mode", parse_enum(Fusion, self.mode, "fusion.mode"))
    for name in ("quality_weight", "diversity_weight"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"fusion.{name}", f"must be a finite number, got {value!r}")
    if not isinstance(self.shift_quality_by_group_min, bool):
      raise InputError("fusion.shift_quality_by_group_min",
                       f"must be a bool, got {self.shift_quality_by_group_min!r}")


def _zscore(x_BxG: Float[Array, "B G"], valid: Bool[Array, "B G"] | None) -> Float[Array, "B G"]:
  std_Bx1 = group_std(x_BxG, valid, ddof=0)
  safe_std_Bx1 = jnp.where(std_Bx1 > 0, std_Bx1, 1.0)
  return jnp.where(std_Bx1 > 0, (x_BxG - group_mean(x_BxG, valid)) / safe_std_Bx1, 0.0)


def fuse(
    quality_BxG: Float[Array, "B G"],
    div_BxG: Float[Array, "B G"],
    config: FusionConfig = FusionConfig(),
    valid: Bool[Array, "B G"] | None = None,
) -> Float[Array, "B G"]:
  """The fused reward r per rollout; formulas in the module docstring.

  Args:
    quality_BxG: q (verifier 0/1 or reward-model scalar).
    div_BxG: div from `darling_jax.diversity.diversity_scores` (or n-gram diversity).
    config: FusionConfig.
    valid: optional [B, G] mask of real rollouts.

  Returns:
    float32 [B, G]; 0 at padding rollouts.
  """
  chex.assert_rank(quality_BxG, 2)
  chex.assert_equal_shape([quality_BxG, div_BxG])
  q_BxG = quality_BxG.astype(jnp.float32)
  div_BxG = div_BxG.astype(jnp.float32)
  if config.shift_quality_by_group_min:
    q_BxG = q_BxG - group_min(q_BxG, valid)
  l_q, l_d = jnp.float32(config.quality_weight), jnp.float32(config.diversity_weight)
  match config.mode:
    case Fusion.MULTIPLICATIVE:
      r_BxG = q_BxG * div_BxG
    case Fusion.ADDITIVE:
      r_BxG = l_q * q_BxG + l_d * div_BxG
    case Fusion.ZSCORE_ADDITIVE:
      r_BxG = l_q * _zscore(q_BxG, valid) + l_d * _zscore(div_BxG, valid)
    case Fusion.QUALITY_ONLY:
      r_BxG = q_BxG
  if valid is None:
    return r_BxG
  chex.assert_equal_shape([q_BxG, valid])
  return jnp.where(valid, r_BxG, 0.0)
