"""The DARLING update: one jitted function from a step's rollouts to new parameters.

Axis letters: B prompts, G rollouts per prompt, M mini-batches, U micro-batches per mini-batch,
b prompts per micro-batch, S = b * G sequences, P prompt length, N response length.

  update_step(state, batch, frozen) -> (state, metrics):
    A [B, G]  <- threshold -> partition -> diversity -> fusion -> advantage   (darling_reward.py)
    for each of M mini-batches (lax.scan; prompts b with b % M == m, so each spans all devices):
      grads = sum over U micro-batches of grad(L_pg + beta * L_kl)   (lax.scan, global normaliser)
      params, opt_state <- optax (clip, AdamW)   -- skipped if the loss or grads are not finite

Gradient accumulation is exact: every micro-batch divides by the normaliser of its whole
mini-batch, so the summed micro-batch losses equal the mini-batch loss (policy_loss.py).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darling_jax.errors import InputError
from darling_jax.models.logprobs import token_logprobs
from darling_jax.rl.darling_reward import RewardConfig, darling_advantages
from darling_jax.rl.kl import KLConfig, kl_loss
from darling_jax.rl.lora import LoraConfig, merge_lora
from darling_jax.rl.policy_loss import PolicyLossConfig, clipped_policy_loss, loss_normalizer
from darling_jax.rl.state import TrainState, UpdateBatch


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """How one step's batch becomes optimizer updates (paper defaults)."""

  mini_batches: int = 1  # optimizer updates per step (the paper's math recipe: 256 / 64 = 4)
  micro_batch_prompts: int = 0  # prompts per gradient-accumulation micro-batch; 0 = whole mini-batch
  temperature: float = 1.0  # sampling temperature; the loss scores logits / T like pi_old did
  logprob_chunk: int = 128  # response positions per LM-head chunk (bounds [S, chunk, V] memory)
  # pi_old from a trainer forward instead of the sampler's log-probs; None: exactly when sampler
  # filters (top-k/p, min-p) make the sampled distribution differ from softmax(z / T)
  recompute_old_logprobs: bool | None = None
  policy_loss: PolicyLossConfig = PolicyLossConfig()
  kl: KLConfig = KLConfig()  # beta = 0: no reference model (the paper's math runs)
  reward: RewardConfig = RewardConfig()
  lora: LoraConfig = LoraConfig()

  def __post_init__(self):
    if self.mini_batches < 1:
      raise InputError("update.mini_batches", f"must be >= 1, got {self.mini_batches}")
    if self.micro_batch_prompts < 0:
      raise InputError("update.micro_batch_prompts", f"must be >= 0, got {self.micro_batch_prompts}")
    if not (self.temperature > 0 and math.isfinite(self.temperature)):
      raise InputError("update.temperature", f"must be > 0, got {self.temperature}")

  def split(self, num_prompts: int) -> tuple[int, int]:
    """(M, U) for a step of `num_prompts` prompts, or an InputError naming the mismatch."""
    M = self.mini_batches
    if num_prompts % M:
      raise InputError("update.mini_batches", f"{M} does not divide the {num_prompts} prompts of "
                       "a step (data.batch_size)")
    per_mb = num_prompts // M
    b = self.micro_batch_prompts or per_mb
    if per_mb % b:
      raise InputError("update.micro_batch_prompts", f"{b} does not divide the {per_mb} prompts "
                       "of a mini-batch")
    return M, per_mb // b


def policy_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids_SxP: jax.Array,
    prompt_mask_SxP: jax.Array,
    response_ids_SxN: jax.Array,
    response_mask_SxN: jax.Array,
    *,
    temperature: float = 1.0,
    chunk: int = 128,
    with_entropy: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
  """log pi(response token | prompt, earlier response tokens) [S, N] (+ entropies) for a policy."""
  model = nnx.merge(graphdef, params)
  ids = jnp.concatenate([prompt_ids_SxP, response_ids_SxN], axis=1)
  mask = jnp.concatenate([prompt_mask_SxP, response_mask_SxN], axis=1)
  hidden = model.hidden_states(ids, mask)
  Pn, N = prompt_ids_SxP.shape[1], response_ids_SxN.shape[1]
  # Position P-1+t holds the prediction of response token t.
  h_SxNxD = jax.lax.dynamic_slice_in_dim(hidden, Pn - 1, N, axis=1)
  return token_logprobs(h_SxNxD, model.head_weight(), response_ids_SxN, temperature=temperature,
                        chunk=chunk, with_entropy=with_entropy)


def _strided(x: jax.Array, parts: int) -> jax.Array:
  """[B, ...] -> [parts, B / parts, ...] taking every `parts`-th row, so each part keeps the batch
  axis's device layout (row b goes to part b % parts)."""
  return x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)


def _flat_groups(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_update_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: UpdateConfig,
    mesh: Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> Callable[[TrainState, UpdateBatch, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """The (unjitted) update function; `jit_update_step` compiles it with shardings and donation.

  `frozen` is the base policy's params when LoRA is on (state.params then holds the adapters),
  else None.
  """
  pl, kl_cfg = config.policy_loss, config.kl
  use_kl = kl_cfg.beta > 0

  def constrain(x: jax.Array) -> jax.Array:
    if mesh is None:
      return x
    axes = tuple(a for a in batch_axes if a in mesh.shape)
    n = math.prod(mesh.shape[a] for a in axes)
    if x.shape[0] % n:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axes)))

  def full_params(trainable, frozen):
    return merge_lora(frozen, trainable, config.lora) if config.lora.enabled else trainable

  def micro_loss(trainable, frozen, mb: dict[str, jax.Array], normalizer):
    """Loss of one micro-batch (its share of the mini-batch loss) and its metric sums."""
    G = mb["response_ids"].shape[1]
    prompt_ids = constrain(jnp.repeat(mb["prompt_ids"], G, axis=0))
    prompt_mask = constrain(jnp.repeat(mb["prompt_mask"], G, axis=0))
    resp = constrain(_flat_groups(mb["response_ids"]))
    mask = constrain(_flat_groups(mb["response_mask"]))
    logp, entropy = policy_logprobs(
        graphdef, full_params(trainable, frozen), prompt_ids, prompt_mask, resp, mask,
        temperature=config.temperature, chunk=config.logprob_chunk)
    pg, pg_m = clipped_policy_loss(logp, _flat_groups(mb["old_logprobs"]),
                                   _flat_groups(mb["advantages"]), mask, pl, normalizer)
    loss = pg
    tokens = pg_m["num_tokens"]
    sums = {  # token-weighted sums; divided by the mini-batch's token count afterwards
        k: pg_m[k] * tokens for k in ("pg_clipfrac", "pg_clipfrac_low", "pg_clipfrac_high",
                                      "pg_clipfrac_dual", "ppo_kl", "ratio_mean")}
    sums["entropy"] = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(entropy), 0.0))
    sums["num_tokens"] = tokens
    sums["pg_loss"] = jax.lax.stop_gradient(pg)
    sums["ratio_max"] = pg_m["ratio_max"]
    if use_kl:
      kl, kl_m = kl_loss(logp, _flat_groups(mb["ref_logprobs"]), mask, kl_cfg, pl.loss_agg_mode,
                         normalizer, pl.loss_scale_factor)
      loss = loss + kl
      sums["kl_loss"] = kl_m["kl_loss"]
    return loss, sums

  grad_fn = jax.grad(micro_loss, has_aux=True)

  def minibatch_update(carry, mb, num_micro: int):
    trainable, opt_state, frozen = carry
    normalizer = loss_normalizer(mb["response_mask"], pl.loss_agg_mode)
    micro = jax.tree.map(lambda x: _strided(x, num_micro), mb)

    def accumulate(acc, one):
      grads, sums = grad_fn(trainable, frozen, one, normalizer)
      if acc is None:
        return grads, sums
      g_acc, s_acc = acc
      s = {k: (jnp.maximum(s_acc[k], v) if k == "ratio_max" else s_acc[k] + v)
           for k, v in sums.items()}
      return jax.tree.map(jnp.add, g_acc, grads), s

    first = jax.tree.map(lambda x: x[0], micro)
    acc = accumulate(None, first)
    if micro["response_ids"].shape[0] > 1:
      rest = jax.tree.map(lambda x: x[1:], micro)
      acc, _ = jax.lax.scan(lambda a, one: (accumulate(a, one), None), acc, rest)
    grads, sums = acc
    grad_norm = optax.global_norm(grads)
    updates, new_opt = optimizer.update(grads, opt_state, trainable)
    new_params = optax.apply_updates(trainable, updates)
    loss = sums["pg_loss"] + (sums["kl_loss"] * kl_cfg.beta if use_kl else 0.0)
    update_norm = optax.global_norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    # A non-finite mini-batch leaves params and optimizer untouched; the loop then fails loudly
    # with the step number, and no checkpoint ever holds NaNs.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa
    new_params, new_opt = keep(new_params, trainable), keep(new_opt, opt_state)
    n_tok = jnp.maximum(sums["num_tokens"], 1.0)
    metrics = {k: sums[k] / n_tok for k in ("pg_clipfrac", "pg_clipfrac_low", "pg_clipfrac_high",
                                            "pg_clipfrac_dual", "ppo_kl", "ratio_mean", "entropy")}
    metrics.update(pg_loss=sums["pg_loss"], ratio_max=sums["ratio_max"], loss=loss,
                   grad_norm=grad_norm, update_norm=update_norm,
                   nonfinite=(~finite).astype(jnp.float32), response_tokens=sums["num_tokens"])
    if use_kl:
      metrics["kl"] = sums["kl_loss"]
    return (new_params, new_opt, frozen), metrics

  def update_step(state: TrainState, batch: UpdateBatch, frozen: Any = None):
    B, G, N = batch.response_ids.shape
    chex.assert_shape(batch.quality, (B, G))
    chex.assert_shape([batch.response_mask, batch.old_logprobs], (B, G, N))
    M, U = config.split(B)
    adv_BxG, metrics = darling_advantages(batch.quality, config.reward, batch.equiv_probs,
                                          batch.diversity)
    data = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
            "response_ids": batch.response_ids, "response_mask": batch.response_mask,
            "old_logprobs": batch.old_logprobs, "advantages": adv_BxG}
    if use_kl:
      if batch.ref_logprobs is None:
        raise InputError("kl.beta", "beta > 0 needs reference log-probs in the batch")
      data["ref_logprobs"] = batch.ref_logprobs
    minibatches = jax.tree.map(lambda x: _strided(x, M), data)
    (params, opt_state, _), mb_metrics = jax.lax.scan(
        lambda c, mb: minibatch_update(c, mb, U), (state.params, state.opt_state, frozen),
        minibatches)
    for k, v in mb_metrics.items():
      metrics[k] = jnp.max(v) if k in ("ratio_max", "nonfinite") else jnp.mean(v)
    metrics["response_tokens"] = jnp.sum(mb_metrics["response_tokens"])
    metrics["param_norm"] = optax.global_norm(params)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return update_step


def jit_update_step(update_step, state_shardings=None, batch_shardings=None, frozen_shardings=None):
  """Compiles `update_step` with donated state and (optional) explicit shardings."""
  if state_shardings is None:
    return jax.jit(update_step, donate_argnums=0)
  return jax.jit(update_step, donate_argnums=0,
                 in_shardings=(state_shardings, batch_shardings, frozen_shardings),
                 out_shardings=(state_shardings, None))
