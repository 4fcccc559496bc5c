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

update.layout (rl/layout.py) picks what a micro-batch computes. padded: S = b * G sequences of
P + N columns. bucketed / packed: R rows of T columns (a length bucket) holding only real tokens,
laid out on the host by rl/packing.py (`BatchPacker`, from lengths only) and gathered here from
the [B, G, N] arrays (rl/packed_forward.py); the advantages, mini-batch membership and loss
normalisers are those of the padded step, per-sequence loss sums are segment sums
(`segment_agg_loss`), so all three layouts give the same loss, gradients and metrics.
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

from darling_jax.errors import InputError, parse_enum
from darling_jax.models.logprobs import token_logprobs
from darling_jax.rl.darling_reward import RewardConfig, darling_advantages
from darling_jax.rl.kl import KLConfig, kl_loss, kl_penalty
from darling_jax.rl.layout import DEFAULT_LENGTH_BUCKETS, Layout, check_buckets
from darling_jax.rl.lora import LoraConfig, merge_lora
from darling_jax.rl.packed_forward import gather_rows, packed_logprobs, token_tables
from darling_jax.rl.policy_loss import (
    LossAggMode,
    PolicyLossConfig,
    clipped_policy_loss,
    loss_normalizer,
    ppo_token_loss,
    segment_agg_loss,
    token_metrics,
)
from darling_jax.rl.state import PackedBatch, TrainState, UpdateBatch


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
  # Sequence layout (rl/layout.py): "padded" (P + N columns each), "bucketed" (cut to the longest
  # real sequence, rounded up to a bucket) or "packed" (several sequences per row). The non-padded
  # layouts need the step's batch through rl.packing.BatchPacker first.
  layout: Layout = Layout.PADDED
  length_buckets: tuple[int, ...] = ()  # row lengths; () = 64, 96, 128, 192, 256, ...
  max_tokens_per_micro_batch: int = 0  # packed: rows x row length per micro-batch, all devices
  # together; 0 = the whole mini-batch in one micro-batch
  policy_loss: PolicyLossConfig = PolicyLossConfig()
  kl: KLConfig = KLConfig()  # beta = 0: no reference model (the paper's math runs)
  reward: RewardConfig = RewardConfig()
  lora: LoraConfig = LoraConfig()

  def __post_init__(self):
    object.__setattr__(self, "layout", parse_enum(Layout, self.layout, "update.layout"))
    object.__setattr__(self, "length_buckets", tuple(self.length_buckets))
    check_buckets(self.length_buckets)
    if self.max_tokens_per_micro_batch < 0:
      raise InputError("update.max_tokens_per_micro_batch",
                       f"must be >= 0, got {self.max_tokens_per_micro_batch}")
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

  def buckets(self) -> tuple[int, ...]:
    return self.length_buckets or DEFAULT_LENGTH_BUCKETS


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


def row_constraint(mesh: Mesh | None, batch_axes: tuple[str, ...] = ("data", "fsdp"),
                   where: str = "update.micro_batch_prompts") -> Callable[[jax.Array], jax.Array]:
  """x -> x with its leading (row / sequence) axis sharded over the batch mesh axes.

  A leading axis that does not divide over those devices is an InputError naming `where` at
  trace time (before anything compiles): silently replicating it would leave devices idle.
  """
  if mesh is None:
    return lambda x: x
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  n = math.prod(mesh.shape[a] for a in axes)

  def constrain(x: jax.Array) -> jax.Array:
    if x.shape[0] % n:
      raise InputError(where, f"a micro-batch of {x.shape[0]} sequences does not divide over the "
                       f"{n} devices of the batch mesh axes {axes}; change it, or use "
                       "update.layout=bucketed / packed (which pad the rows)")
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axes)))

  return constrain


def _mini_batch_normalizers(seq_tokens_BxG: jax.Array, M: int, mode) -> jax.Array:
  """loss_normalizer of each mini-batch [M] from the sequences' token counts (prefix masks)."""
  per_mb = _strided(seq_tokens_BxG, M).reshape(M, -1)
  if mode == LossAggMode.TOKEN_MEAN:
    return jnp.sum(per_mb, axis=1, dtype=jnp.int32).astype(jnp.float32)
  return jnp.sum(per_mb > 0, axis=1, dtype=jnp.int32).astype(jnp.float32)


def make_update_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    config: UpdateConfig,
    mesh: Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """The (unjitted) update function; `jit_update_step` compiles it with shardings and donation.

  update_step(state, batch, frozen): `batch` is an UpdateBatch (padded layout) or the
  PackedBatch of `rl.packing.BatchPacker` (any layout; required for bucketed / packed).
  `frozen` is the base policy's params when LoRA is on (state.params then holds the adapters),
  else None.
  """
  pl, kl_cfg = config.policy_loss, config.kl
  use_kl = kl_cfg.beta > 0
  constrain = row_constraint(mesh, batch_axes)
  constrain_rows = row_constraint(mesh, batch_axes, "update.max_tokens_per_micro_batch")

  def full_params(trainable, frozen):
    return merge_lora(frozen, trainable, config.lora) if config.lora.enabled else trainable

  def metric_sums(pg, pg_m, entropy_sum, kl_m):
    tokens = pg_m["num_tokens"]
    sums = {  # token-weighted sums; divided by the mini-batch's token count afterwards
        k: pg_m[k] * tokens for k in ("pg_clipfrac", "pg_clipfrac_low", "pg_clipfrac_high",
                                      "pg_clipfrac_dual", "ppo_kl", "ratio_mean")}
    sums["entropy"] = entropy_sum
    sums["num_tokens"] = tokens
    sums["pg_loss"] = jax.lax.stop_gradient(pg)
    sums["ratio_max"] = pg_m["ratio_max"]
    if kl_m is not None:
      sums["kl_loss"] = kl_m
    return sums

  def padded_micro_loss(trainable, frozen, mb: dict[str, jax.Array], ctx):
    """Loss of one micro-batch (its share of the mini-batch loss) and its metric sums."""
    normalizer = ctx
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
    loss, kl_m = pg, None
    if use_kl:
      kl, kl_stats = kl_loss(logp, _flat_groups(mb["ref_logprobs"]), mask, kl_cfg,
                             pl.loss_agg_mode, normalizer, pl.loss_scale_factor)
      loss, kl_m = loss + kl, kl_stats["kl_loss"]
    entropy_sum = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(entropy), 0.0))
    return loss, metric_sums(pg, pg_m, entropy_sum, kl_m)

  def packed_micro_loss(trainable, frozen, idx: dict[str, jax.Array], ctx):
    """The same loss for one micro-batch of packed rows; per-sequence sums are segment sums."""
    tables, normalizer, N = ctx
    rows = {k: constrain_rows(v) for k, v in gather_rows(tables, idx, N).items()}
    mask = rows["mask"]
    logp, entropy = packed_logprobs(
        graphdef, full_params(trainable, frozen), rows["ids"], rows["pos"], rows["seg"],
        rows["targets"], temperature=config.temperature, chunk=config.logprob_chunk)
    # T_norm stays the padded response length N: the row length must not change the loss.
    t_norm = N if pl.loss_scale_factor is None else pl.loss_scale_factor
    agg = lambda x: segment_agg_loss(x, mask, rows["seq"], tables["seq_tokens"],  # noqa: E731
                                     pl.loss_agg_mode, normalizer, t_norm)
    token_loss, facts = ppo_token_loss(logp, rows["old_logprobs"], rows["advantages"], mask, pl)
    pg = agg(token_loss)
    loss, kl_m = pg, None
    if use_kl:
      safe = lambda x: jnp.where(mask, x.astype(jnp.float32), 0.0)  # noqa: E731
      kl = agg(kl_penalty(safe(logp), safe(rows["ref_logprobs"]), kl_cfg.estimator))
      loss, kl_m = loss + jnp.float32(kl_cfg.beta) * kl, jax.lax.stop_gradient(kl)
    entropy_sum = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(entropy), 0.0))
    return loss, metric_sums(pg, token_metrics(facts, mask), entropy_sum, kl_m)

  def minibatch_update(carry, micro, ctx, micro_loss):
    """Accumulates the micro-batches' gradients ([U, ...] leaves of `micro`), then one optimizer
    step on the sum (skipped if not finite)."""
    trainable, opt_state, frozen = carry
    grad_fn = jax.grad(micro_loss, has_aux=True)

    def accumulate(acc, one):
      grads, sums = grad_fn(trainable, frozen, one, ctx)
      if acc is None:
        return grads, sums
      g_acc, s_acc = acc
      s = {k: (jnp.maximum(s_acc[k], v) if k == "ratio_max" else s_acc[k] + v)
           for k, v in sums.items()}
      return jax.tree.map(jnp.add, g_acc, grads), s

    first = jax.tree.map(lambda x: x[0], micro)
    acc = accumulate(None, first)
    if jax.tree.leaves(micro)[0].shape[0] > 1:
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

  def update_step(state: TrainState, batch: UpdateBatch | PackedBatch, frozen: Any = None):
    packed = batch if isinstance(batch, PackedBatch) else PackedBatch(batch=batch)
    batch = packed.batch
    B, G, N = batch.response_ids.shape
    chex.assert_shape(batch.quality, (B, G))
    chex.assert_shape([batch.response_mask, batch.old_logprobs], (B, G, N))
    if (packed.src is None) != (config.layout is Layout.PADDED):
      raise InputError("update.layout", f"{config.layout.value} needs the batch as "
                       "rl.packing.BatchPacker returns it for this layout")
    M, U = config.split(B)
    adv_BxG, metrics = darling_advantages(batch.quality, config.reward, batch.equiv_probs,
                                          batch.diversity)
    if use_kl and batch.ref_logprobs is None:
      raise InputError("kl.beta", "beta > 0 needs reference log-probs in the batch")
    carry = (state.params, state.opt_state, frozen)
    if packed.src is None:
      data = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
              "response_ids": batch.response_ids, "response_mask": batch.response_mask,
              "old_logprobs": batch.old_logprobs, "advantages": adv_BxG}
      if use_kl:
        data["ref_logprobs"] = batch.ref_logprobs
      minibatches = jax.tree.map(lambda x: _strided(x, M), data)

      def one_minibatch(c, mb):
        micro = jax.tree.map(lambda x: _strided(x, U), mb)
        normalizer = loss_normalizer(mb["response_mask"], pl.loss_agg_mode)
        return minibatch_update(c, micro, normalizer, padded_micro_loss)

      (params, opt_state, _), mb_metrics = jax.lax.scan(one_minibatch, carry, minibatches)
    else:
      idx = {"src": packed.src, "tgt": packed.tgt, "seg": packed.seg, "pos": packed.pos}
      chex.assert_equal_shape(list(idx.values()))
      chex.assert_axis_dimension(packed.src, 0, M)
      tables = token_tables(batch, {"advantages": adv_BxG})
      seq_tokens = tables["seq_tokens"].reshape(B, G)
      normalizers = _mini_batch_normalizers(seq_tokens, M, pl.loss_agg_mode)

      def one_minibatch(c, xs):
        micro, normalizer = xs
        return minibatch_update(c, micro, (tables, normalizer, N), packed_micro_loss)

      (params, opt_state, _), mb_metrics = jax.lax.scan(one_minibatch, carry, (idx, normalizers))
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
