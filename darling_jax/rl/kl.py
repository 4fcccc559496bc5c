"""Per-token KL estimators to the frozen reference policy, and the KL loss term.

Axis legend: `*S` any leading sequence axes, T response length.

With delta = logp - logp_ref (log pi_theta - log pi_ref of the sampled token), Schulman's
estimators of KL(pi_theta || pi_ref) (verl's `kl_loss_type` names in brackets):

  K1 ("k1", alias "kl")          delta                                unbiased, high variance
  K2 ("k2", alias "mse")         delta^2 / 2                          biased, low variance
  K3 ("low_var_kl", alias "k3")  clip(e^x - x - 1, -10, 10),  x = clip(-delta, -20, 20)
                                 unbiased, >= 0, low variance (GRPO's and the paper's choice)

K3's clamps are verl's (x before exp, the result after); e^x - x - 1 is computed as expm1(x) - x
to keep float32 precision for small x. The loss term is beta * agg(KL) with the SAME aggregation
(mode and normalizer) as the policy loss; the paper uses beta = 0.001 for chat and beta = 0 for
math (then the reference forward can be skipped altogether).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from darling_jax.errors import InputError
from darling_jax.rl.policy_loss import LossAggMode, agg_loss


class KLEstimator(enum.Enum):
  """Per-token KL estimator (see the module docstring)."""

  K1 = "k1"
  K2 = "k2"
  K3 = "low_var_kl"

  @classmethod
  def _missing_(cls, value):
    return {"kl": cls.K1, "mse": cls.K2, "k3": cls.K3}.get(value)


def _estimator(value: KLEstimator | str, where: str) -> KLEstimator:
  try:
    return KLEstimator(value)
  except ValueError:
    raise InputError(where, f"unknown value {value!r}; choose from "
                     f"{[e.value for e in KLEstimator]} (or kl, mse, k3)") from None


@dataclasses.dataclass(frozen=True)
class KLConfig:
  """KL-to-reference loss settings (verl's kl_loss_coef / kl_loss_type, TRL's beta)."""

  beta: float = 0.0
  estimator: KLEstimator = KLEstimator.K3

  def __post_init__(self):
    object.__setattr__(self, "estimator", _estimator(self.estimator, "kl.estimator"))
    if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not (
        math.isfinite(self.beta) and self.beta >= 0
    ):
      raise InputError("kl.beta", f"must be a finite number >= 0, got {self.beta!r}")


def kl_penalty(
    logp: Float[Array, "*S T"],
    logp_ref: Float[Array, "*S T"],
    estimator: KLEstimator | str = KLEstimator.K3,
) -> Float[Array, "*S T"]:
  """Per-token KL estimate (float32), formulas in the module docstring. Differentiable in logp."""
  estimator = _estimator(estimator, "kl_penalty: estimator")
  chex.assert_equal_shape([logp, logp_ref])
  delta = logp.astype(jnp.float32) - jax.lax.stop_gradient(logp_ref.astype(jnp.float32))
  match estimator:
    case KLEstimator.K1:
      return delta
    case KLEstimator.K2:
      return 0.5 * delta * delta
    case KLEstimator.K3:
      x = jnp.clip(-delta, -20.0, 20.0)
      return jnp.clip(jnp.expm1(x) - x, -10.0, 10.0)


def kl_loss(
    logp: Float[Array, "*S T"],
    logp_ref: Float[Array, "*S T"],
    mask: Bool[Array, "*S T"],
    config: KLConfig,
    loss_agg_mode: LossAggMode | str = LossAggMode.TOKEN_MEAN,
    normalizer: Float[Array, ""] | float | None = None,
    loss_scale_factor: int | None = None,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
  """beta * agg(KL), aggregated exactly like the policy loss (same mode, normalizer, T_norm).

  Returns:
    (loss, {"kl_loss": agg(KL) without beta}). Padding positions are zeroed before the estimator so
    an inf/nan there cannot reach the gradient.
  """
  m = mask.astype(jnp.bool_)
  chex.assert_equal_shape([logp, logp_ref, m])
  safe_logp = jnp.where(m, logp.astype(jnp.float32), 0.0)
  safe_ref = jnp.where(m, logp_ref.astype(jnp.float32), 0.0)
  kl = agg_loss(kl_penalty(safe_logp, safe_ref, config.estimator), m, loss_agg_mode, normalizer,
                loss_scale_factor)
  return jnp.float32(config.beta) * kl, {"kl_loss": jax.lax.stop_gradient(kl)}
