"""Token strategies: composable logit filters and the per-row categorical / greedy choice.

Axis letters: R rows (rollouts, B * G), V vocab, C candidate tokens (a sorted prefix of V).

A filter maps logits [R, V] to logits of the same shape where every excluded token is -inf, so the
filtered distribution is `softmax(filtered)` and a sampled token can never be an excluded one
(Gumbel-max: -inf + noise stays -inf). The order follows transformers' `generate`: temperature,
top-k, top-p, min-p.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError
from darling_jax.sampling.config import SamplerConfig

Logits = Float[Array, "R V"]


class LogitFilter(Protocol):

  def __call__(self, logits_RxV: Logits) -> Logits:
    ...


@dataclasses.dataclass(frozen=True)
class Temperature:
  """pi(v) proportional to exp(z_v / tau)."""

  tau: float

  def __post_init__(self):
    if not self.tau > 0:
      raise InputError("Temperature.tau", f"must be > 0, got {self.tau}")

  def __call__(self, logits_RxV: Logits) -> Logits:
    return logits_RxV if self.tau == 1.0 else logits_RxV / jnp.float32(self.tau)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Keeps z_v >= the k-th largest logit (ties at the boundary are kept, as in transformers)."""

  k: int

  def __post_init__(self):
    if self.k < 1:
      raise InputError("TopK.k", f"must be >= 1, got {self.k}")

  def __call__(self, logits_RxV: Logits) -> Logits:
    if self.k >= logits_RxV.shape[-1]:
      return logits_RxV
    kth_Rx1 = jax.lax.top_k(logits_RxV, self.k)[0][:, -1:]
    return jnp.where(logits_RxV >= kth_Rx1, logits_RxV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus: keeps token v iff the probability of the tokens ranked above it is < p.

  That is the smallest prefix of the descending order whose mass reaches p (the top token is always
  kept). `candidates` > 0 promises that at most that many logits are finite (a preceding TopK), so
  only the top `candidates` are sorted instead of the whole vocabulary.
  """

  p: float
  candidates: int = 0

  def __post_init__(self):
    if not 0 < self.p <= 1:
      raise InputError("TopP.p", f"must be in (0, 1], got {self.p}")

  def __call__(self, logits_RxV: Logits) -> Logits:
    if self.p >= 1.0:
      return logits_RxV
    V = logits_RxV.shape[-1]
    if 0 < self.candidates < V:
      sorted_RxC = jax.lax.top_k(logits_RxV, self.candidates)[0]
    else:
      sorted_RxC = -jnp.sort(-logits_RxV, axis=-1)
    log_z_Rx1 = jax.nn.logsumexp(logits_RxV, axis=-1, keepdims=True)
    probs_RxC = jnp.exp(sorted_RxC - log_z_Rx1)
    mass_above_RxC = jnp.cumsum(probs_RxC, axis=-1) - probs_RxC
    # The kept set is a prefix of the sorted order (mass_above is non-decreasing); its last member
    # is the threshold, so ties with it are kept too.
    num_kept_R = jnp.sum(mass_above_RxC < self.p, axis=-1)
    thresh_Rx1 = jnp.take_along_axis(sorted_RxC, num_kept_R[:, None] - 1, axis=-1)
    return jnp.where(logits_RxV >= thresh_Rx1, logits_RxV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class MinP:
  """Keeps p_v >= min_p * max_u p_u, i.e. z_v >= max z + log(min_p)."""

  p: float

  def __post_init__(self):
    if not 0 <= self.p < 1:
      raise InputError("MinP.p", f"must be in [0, 1), got {self.p}")

  def __call__(self, logits_RxV: Logits) -> Logits:
    if self.p == 0.0:
      return logits_RxV
    floor_Rx1 = jnp.max(logits_RxV, axis=-1, keepdims=True) + jnp.log(jnp.float32(self.p))
    return jnp.where(logits_RxV >= floor_Rx1, logits_RxV, -jnp.inf)


def filters_for(cfg: SamplerConfig) -> tuple[LogitFilter, ...]:
  """The filter chain a config asks for (empty for greedy and for plain T = 1 sampling)."""
  if cfg.greedy:
    return ()
  chain: list[LogitFilter] = []
  if cfg.temperature != 1.0:
    chain.append(Temperature(cfg.temperature))
  if cfg.top_k > 0:
    chain.append(TopK(cfg.top_k))
  if cfg.top_p < 1.0:
    chain.append(TopP(cfg.top_p, candidates=cfg.top_k))
  if cfg.min_p > 0.0:
    chain.append(MinP(cfg.min_p))
  return tuple(chain)


def apply_filters(chain: tuple[LogitFilter, ...], logits_RxV: Logits) -> Logits:
  for f in chain:
    logits_RxV = f(logits_RxV)
  return logits_RxV


def row_keys(key: Array, step: Int[Array, ""] | int, num_rows: int) -> Array:
  """One key per row for one decode step: fold_in(fold_in(key, step), row).

  Depends only on (key, step, global row index), never on the mesh or on how rows are sharded.
  """
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(num_rows, dtype=jnp.uint32))


def choose_tokens(
    cfg: SamplerConfig, logits_RxV: Logits, keys_R: Array
) -> tuple[Int[Array, "R"], Float[Array, "R"]]:
  """Samples one token per row; returns (tokens, log pi(token)).

  log pi is under the distribution actually sampled from: the temperature-scaled, filtered,
  renormalised softmax. Greedy decoding has no sampling distribution, so it reports the model's
  own log-probability log softmax(z)[token] (temperature 1, unfiltered).
  """
  logits_RxV = logits_RxV.astype(jnp.float32)
  if cfg.greedy:
    filtered_RxV = logits_RxV
    tokens_R = jnp.argmax(logits_RxV, axis=-1).astype(jnp.int32)
  else:
    filtered_RxV = apply_filters(filters_for(cfg), logits_RxV)
    tokens_R = jax.vmap(jax.random.categorical)(keys_R, filtered_RxV).astype(jnp.int32)
  chosen_R = jnp.take_along_axis(filtered_RxV, tokens_R[:, None], axis=-1)[:, 0]
  return tokens_R, chosen_R - jax.nn.logsumexp(filtered_RxV, axis=-1)
