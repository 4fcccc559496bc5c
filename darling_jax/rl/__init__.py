"""The RL math of a DARLING update: reward fusion, group advantages, PPO loss, KL to reference."""

from darling_jax.rl.advantages import ScaleRewards, group_advantages
from darling_jax.rl.fusion import Fusion, FusionConfig, fuse
from darling_jax.rl.kl import KLConfig, KLEstimator, kl_loss, kl_penalty
from darling_jax.rl.policy_loss import (
    LossAggMode,
    PolicyLossConfig,
    agg_loss,
    clipped_policy_loss,
    loss_normalizer,
)

__all__ = [
    "Fusion",
    "FusionConfig",
    "KLConfig",
    "KLEstimator",
    "LossAggMode",
    "PolicyLossConfig",
    "ScaleRewards",
    "agg_loss",
    "clipped_policy_loss",
    "fuse",
    "group_advantages",
    "kl_loss",
    "kl_penalty",
    "loss_normalizer",
]
