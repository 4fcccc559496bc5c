"""PPO clipped surrogate (asymmetric + dual clip) and the loss aggregation modes, verl-style.

Axis legend: `*S` any leading sequence axes (B G, or B*G flattened, or a micro-batch of them),
T response length (token positions).

Per token t of a sequence with advantage A (the sequence's advantage, broadcast over its tokens):

  rho      = exp(clip(logp_new - logp_old, -20, 20))                  (verl's clamp before exp)
  pg1      = -A * rho
  pg2      = -A * clip(rho, 1 - epsilon, 1 + epsilon_high)
  L_clip   = max(pg1, pg2)                                            (PPO clipped surrogate)
  pg3      = -A * c                                                   (dual clip, c = dual_clip_c)
  L        = min(L_clip, pg3) if A < 0 else L_clip                    (dual-clip PPO, Ye et al.)

The dual clip caps the loss of a negative-advantage token at -c * A when rho has grown large.

Aggregation (verl's `loss_agg_mode` names; m = token mask, N = `normalizer`):

  TOKEN_MEAN               sum_{s,t} m L / N     N default: number of valid tokens      (paper)
  SEQ_MEAN_TOKEN_MEAN      sum_s [sum_t m L / sum_t m] / N   N default: number of sequences
  SEQ_MEAN_TOKEN_SUM       sum_s [sum_t m L] / N             N default: number of sequences
  SEQ_MEAN_TOKEN_SUM_NORM  sum_s [sum_t m L / T_norm] / N    N default: number of sequences;
                           T_norm = `loss_scale_factor` (a constant max length, Dr.GRPO), else T

"Number of sequences" counts sequences with at least one valid token (the same as verl's batch
size when no sequence is fully masked). Every mode is a SUM over sequences divided by one global
N, so for gradient accumulation pass the normalizer of the WHOLE mini-batch
(`loss_normalizer(mini_batch_mask, mode)`) to every micro-batch: the micro-batch losses (and their
gradients) then add up exactly to the mini-batch loss. Under jit over a sharded batch the sums are
already global, which is what verl's `global_batch_info` (batch_num_tokens, global_batch_size)
emulates across data-parallel ranks. Packed rows (several sequences per row) aggregate with
`segment_agg_loss`: the same modes, per-sequence sums as segment sums.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from darling_jax.errors import InputError, parse_enum


class LossAggMode(enum.Enum):
  """How per-token losses become one scalar (verl's `loss_agg_mode` strings)."""

  TOKEN_MEAN = "token-mean"
  SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
  SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
  SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


def _agg_mode(mode: LossAggMode | str, where: str) -> LossAggMode:
  return parse_enum(LossAggMode, mode, where)


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
  """PPO surrogate settings (TRL's epsilon / epsilon_high, verl's clip_ratio_c, loss_agg_mode).

  Attributes:
    epsilon: lower clip range, rho >= 1 - epsilon (verl clip_ratio_low).
    epsilon_high: upper clip range, rho <= 1 + epsilon_high (verl clip_ratio_high, DAPO).
    dual_clip_c: c > 1 of the dual clip for A < 0 (verl clip_ratio_c); None disables it.
    loss_agg_mode: LossAggMode or its string value.
    loss_scale_factor: T_norm of SEQ_MEAN_TOKEN_SUM_NORM; None uses the padded length T.
  """

  epsilon: float = 0.2
  epsilon_high: float = 0.2
  dual_clip_c: float | None = 3.0
  loss_agg_mode: LossAggMode = LossAggMode.TOKEN_MEAN
  loss_scale_factor: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "loss_agg_mode",
                       _agg_mode(self.loss_agg_mode, "policy_loss.loss_agg_mode"))
    if not (_is_number(self.epsilon) and 0 <= self.epsilon < 1):
      raise InputError("policy_loss.epsilon", f"must be in [0, 1), got {self.epsilon!r}")
    if not (_is_number(self.epsilon_high) and self.epsilon_high >= 0):
      raise InputError("policy_loss.epsilon_high", f"must be >= 0, got {self.epsilon_high!r}")
    if self.dual_clip_c is not None and not (_is_number(self.dual_clip_c) and self.dual_clip_c > 1):
      raise InputError("policy_loss.dual_clip_c", f"must be > 1 or None, got {self.dual_clip_c!r}")
    if self.loss_scale_factor is not None and not (
        isinstance(self.loss_scale_factor, int) and self.loss_scale_factor > 0
    ):
      raise InputError("policy_loss.loss_scale_factor",
                       f"must be a positive int or None, got {self.loss_scale_factor!r}")


def _is_number(x) -> bool:
  return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def loss_normalizer(mask: Bool[Array, "*S T"], mode: LossAggMode | str) -> Float[Array, ""]:
  """The default N of `agg_loss` for this mask: valid tokens (TOKEN_MEAN) or valid sequences.

  Compute it once on the full mini-batch mask and pass it to every micro-batch.
  """
  mode = _agg_mode(mode, "loss_normalizer: mode")
  m = mask.astype(jnp.bool_)
  if mode == LossAggMode.TOKEN_MEAN:
    return jnp.sum(m, dtype=jnp.int32).astype(jnp.float32)
  return jnp.sum(jnp.any(m, axis=-1), dtype=jnp.int32).astype(jnp.float32)


def agg_loss(
    loss_mat: Float[Array, "*S T"],
    mask: Bool[Array, "*S T"],
    mode: LossAggMode | str = LossAggMode.TOKEN_MEAN,
    normalizer: Float[Array, ""] | float | None = None,
    loss_scale_factor: int | None = None,
) -> Float[Array, ""]:
  """Aggregates per-token losses into a scalar; formulas in the module docstring.

  Args:
    loss_mat: per-token loss L.
    mask: valid (response, non-padding) tokens.
    mode: LossAggMode or its string value.
    normalizer: N; None uses `loss_normalizer(mask, mode)` (this call's own batch). N = 0 gives 0.
    loss_scale_factor: T_norm for SEQ_MEAN_TOKEN_SUM_NORM (None: T = loss_mat.shape[-1]).

  Returns:
    float32 scalar.
  """
  mode = _agg_mode(mode, "agg_loss: mode")
  chex.assert_equal_shape([loss_mat, mask])
  m = mask.astype(jnp.bool_)
  # where(), not loss * mask: padding positions may hold inf/nan and 0 * inf = nan.
  masked = jnp.where(m, loss_mat.astype(jnp.float32), 0.0)
  match mode:
    case LossAggMode.TOKEN_MEAN | LossAggMode.SEQ_MEAN_TOKEN_SUM:
      total = jnp.sum(masked)
    case LossAggMode.SEQ_MEAN_TOKEN_MEAN:
      tokens_S = jnp.sum(m, axis=-1, dtype=jnp.int32).astype(jnp.float32)
      total = jnp.sum(jnp.sum(masked, axis=-1) / jnp.maximum(tokens_S, 1.0))
    case LossAggMode.SEQ_MEAN_TOKEN_SUM_NORM:
      t_norm = loss_mat.shape[-1] if loss_scale_factor is None else loss_scale_factor
      total = jnp.sum(masked) / jnp.float32(t_norm)
  n = loss_normalizer(m, mode) if normalizer is None else jnp.asarray(normalizer, jnp.float32)
  return _normalized(total, n)


def segment_agg_loss(
    loss_mat: Float[Array, "R T"],
    mask: Bool[Array, "R T"],
    seq_id: Int[Array, "R T"],
    seq_tokens: Float[Array, "S"],
    mode: LossAggMode | str,
    normalizer: Float[Array, ""],
    t_norm: int,
) -> Float[Array, ""]:
  """`agg_loss` for packed rows: token (r, t) belongs to sequence seq_id[r, t] of S sequences.

  Per-sequence sums are segment sums over the tokens, so the modes keep their padded-layout
  definitions: `seq_tokens` [S] are the sequences' valid-token counts (of the WHOLE sequence, not
  just the tokens this call sees), `t_norm` is SEQ_MEAN_TOKEN_SUM_NORM's T_norm (the padded
  response length or loss_scale_factor: the row length must not leak in), and `normalizer` is the
  mini-batch's N (`loss_normalizer`). Masked-out tokens may carry any seq_id in [0, S).
  """
  mode = _agg_mode(mode, "segment_agg_loss: mode")
  chex.assert_equal_shape([loss_mat, mask, seq_id])
  m = mask.astype(jnp.bool_)
  masked = jnp.where(m, loss_mat.astype(jnp.float32), 0.0)
  match mode:
    case LossAggMode.TOKEN_MEAN | LossAggMode.SEQ_MEAN_TOKEN_SUM:
      total = jnp.sum(masked)
    case LossAggMode.SEQ_MEAN_TOKEN_MEAN:
      per_seq = jax.ops.segment_sum(masked.reshape(-1), seq_id.reshape(-1),
                                    num_segments=seq_tokens.shape[0])
      total = jnp.sum(per_seq / jnp.maximum(seq_tokens.astype(jnp.float32), 1.0))
    case LossAggMode.SEQ_MEAN_TOKEN_SUM_NORM:
      total = jnp.sum(masked) / jnp.float32(t_norm)
  return _normalized(total, jnp.asarray(normalizer, jnp.float32))


def _normalized(total: Float[Array, ""], n: Float[Array, ""]) -> Float[Array, ""]:
  """total / N, and 0 for an empty batch (N = 0) without a NaN in either branch's gradient."""
  return jnp.where(n > 0, total / jnp.where(n > 0, n, 1.0), 0.0)


def _masked_mean(x: Array, m: Array) -> Float[Array, ""]:
  count = jnp.sum(m, dtype=jnp.int32).astype(jnp.float32)
  return jnp.sum(jnp.where(m, x.astype(jnp.float32), 0.0)) / jnp.maximum(count, 1.0)


def ppo_token_loss(
    logp_new: Float[Array, "*S T"],
    logp_old: Float[Array, "*S T"],
    advantages: Float[Array, "*S"] | Float[Array, "*S T"],
    mask: Bool[Array, "*S T"],
    config: PolicyLossConfig = PolicyLossConfig(),
) -> tuple[Float[Array, "*S T"], dict[str, Array]]:
  """Per-token dual-clip PPO loss L (module docstring) before aggregation, and the per-token
  facts its metrics are made of (`token_metrics`). Padding positions hold finite values."""
  chex.assert_equal_shape([logp_new, logp_old, mask])
  m = mask.astype(jnp.bool_)
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
  if adv.ndim == logp_new.ndim - 1:
    adv = jnp.broadcast_to(adv[..., None], logp_new.shape)
  chex.assert_equal_shape([adv, logp_new])
  # Zero the log-ratio at padding BEFORE exp: padded log-probs may be -inf, and a nan there would
  # leak into the gradient through where().
  log_ratio = jnp.where(
      m, logp_new.astype(jnp.float32) - jax.lax.stop_gradient(logp_old.astype(jnp.float32)), 0.0
  )
  ratio = jnp.exp(jnp.clip(log_ratio, -20.0, 20.0))

  pg1 = -adv * ratio
  pg2 = -adv * jnp.clip(ratio, 1.0 - config.epsilon, 1.0 + config.epsilon_high)
  clip_loss = jnp.maximum(pg1, pg2)
  clipped = pg2 > pg1
  if config.dual_clip_c is None:
    token_loss = clip_loss
    dual = jnp.zeros_like(m)
  else:
    pg3 = -adv * config.dual_clip_c
    negative = adv < 0
    token_loss = jnp.where(negative, jnp.minimum(clip_loss, pg3), clip_loss)
    dual = negative & (clip_loss > pg3)
  facts = {"clipped": clipped, "negative": adv < 0, "positive": adv > 0, "dual": dual,
           "log_ratio": log_ratio, "ratio": ratio}
  return token_loss, facts


def token_metrics(facts: dict[str, Array], mask: Bool[Array, "*S T"]) -> dict[str, Array]:
  """The masked token means of `clipped_policy_loss`'s metrics (all but pg_loss), from the facts
  `ppo_token_loss` returns."""
  m = mask.astype(jnp.bool_)
  clipped = facts["clipped"]
  metrics = {
      "pg_clipfrac": _masked_mean(clipped, m),
      "pg_clipfrac_low": _masked_mean(clipped & facts["negative"], m),
      "pg_clipfrac_high": _masked_mean(clipped & facts["positive"], m),
      "pg_clipfrac_dual": _masked_mean(facts["dual"], m),
      "ppo_kl": _masked_mean(-facts["log_ratio"], m),
      "ratio_mean": _masked_mean(facts["ratio"], m),
      "ratio_max": jnp.max(jnp.where(m, facts["ratio"], 0.0)),
      "num_tokens": jnp.sum(m, dtype=jnp.int32).astype(jnp.float32),
  }
  return jax.tree.map(jax.lax.stop_gradient, metrics)


def clipped_policy_loss(
    logp_new: Float[Array, "*S T"],
    logp_old: Float[Array, "*S T"],
    advantages: Float[Array, "*S"] | Float[Array, "*S T"],
    mask: Bool[Array, "*S T"],
    config: PolicyLossConfig = PolicyLossConfig(),
    normalizer: Float[Array, ""] | float | None = None,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
  """PPO clipped surrogate with dual clip, aggregated by `config.loss_agg_mode`.

  Formulas in the module docstring. Gradients flow only through `logp_new`; `logp_old` and
  `advantages` are treated as data (stop_gradient).

  Args:
    logp_new: log pi_theta(token) under the policy being optimised.
    logp_old: log pi_old(token) under the policy that sampled the rollouts.
    advantages: per-sequence [*S] (broadcast over T) or per-token [*S, T].
    mask: valid response tokens.
    config: PolicyLossConfig.
    normalizer: N of the aggregation; pass `loss_normalizer(full_mask, mode)` of the whole
      mini-batch when this call sees one micro-batch. None: this call's own batch.

  Returns:
    (loss, metrics). metrics are masked token means over THIS call's tokens (verl's names):
    pg_clipfrac (pg2 > pg1: either clip active), pg_clipfrac_low (A < 0, rho < 1 - epsilon),
    pg_clipfrac_high (A > 0, rho > 1 + epsilon_high), pg_clipfrac_dual (A < 0 and the dual clip
    active; verl's pg_clipfrac_lower), ppo_kl (mean of logp_old - logp_new, the k1 estimate of
    KL(pi_old || pi_theta)), ratio_mean, ratio_max, and num_tokens (to weight metric averages
    across micro-batches).
  """
  token_loss, facts = ppo_token_loss(logp_new, logp_old, advantages, mask, config)
  m = mask.astype(jnp.bool_)
  loss = agg_loss(token_loss, m, config.loss_agg_mode, normalizer, config.loss_scale_factor)
  metrics = {"pg_loss": jax.lax.stop_gradient(loss), **token_metrics(facts, m)}
  return loss, metrics
