"""log pi_ref of a step's response tokens, through the same layout and micro-batches as the update.

Axis letters: B prompts, G rollouts, P prompt columns, N response columns, M mini-batches, U
micro-batches per mini-batch, b prompts per micro-batch, R rows, T row length.

    ref_fn = make_reference_logprobs(graphdef, update_cfg, mesh)
    packed, facts = packer(batch)                      # rl.packing.BatchPacker
    ref_BxGxN = ref_fn(ref_params, packed)             # or ref_fn(ref_params, batch) if padded
    packed = packed.replace(batch=packed.batch.replace(ref_logprobs=ref_BxGxN))

One forward per micro-batch (lax.map), so memory is bounded like the update's, not by all B x G
sequences at once. Result: [B, G, N] float32, equal to the padded single-call computation at
every valid response token; 0 at padding (which the KL term masks out).
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from darling_jax.rl.layout import Layout
from darling_jax.rl.packed_forward import gather_rows, packed_logprobs, scatter_to_responses
from darling_jax.rl.packed_forward import token_tables
from darling_jax.rl.state import PackedBatch, UpdateBatch
from darling_jax.rl.update import UpdateConfig, _strided, policy_logprobs, row_constraint


def _unstrided(x: jax.Array) -> jax.Array:
  """Inverse of update._strided: [parts, B / parts, ...] -> [B, ...]."""
  return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_reference_logprobs(
    graphdef: nnx.GraphDef,
    config: UpdateConfig,
    mesh: Mesh | None = None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
) -> Callable[[nnx.State, UpdateBatch | PackedBatch], jax.Array]:
  """A jitted fn(ref_params, batch) -> log pi_ref [B, G, N] (module docstring)."""
  constrain = row_constraint(mesh, batch_axes)
  constrain_rows = row_constraint(mesh, batch_axes, "update.max_tokens_per_micro_batch")
  score = dict(temperature=config.temperature, chunk=config.logprob_chunk, with_entropy=False)

  def padded(params, batch: UpdateBatch) -> jax.Array:
    B, G, N = batch.response_ids.shape
    M, U = config.split(B)
    # [M, U, b, ...]: the update's mini-batch (b % M) and micro-batch split of the prompts.
    split = lambda x: jax.vmap(lambda y: _strided(y, U))(_strided(x, M))  # noqa: E731
    data = jax.tree.map(split, (batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                batch.response_mask))
    flat = jax.tree.map(lambda x: x.reshape(M * U, *x.shape[2:]), data)

    def one(xs):
      p_ids, p_mask, r_ids, r_mask = xs
      flat_g = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
      logp, _ = policy_logprobs(
          graphdef, params, constrain(jnp.repeat(p_ids, G, 0)), constrain(jnp.repeat(p_mask, G, 0)),
          constrain(flat_g(r_ids)), constrain(flat_g(r_mask)), **score)
      return jnp.where(flat_g(r_mask), logp, 0.0).reshape(r_ids.shape)

    out = jax.lax.map(one, flat).reshape(M, U, B // (M * U), G, N)
    return _unstrided(jax.vmap(_unstrided)(out))

  def packed_layout(params, packed: PackedBatch) -> jax.Array:
    batch = packed.batch.replace(ref_logprobs=None)
    B, G, N = batch.response_ids.shape
    tables = token_tables(batch, {})
    M, U, R, T = packed.src.shape
    idx = {k: getattr(packed, k).reshape(M * U, R, T) for k in ("src", "tgt", "seg", "pos")}

    def one(micro):
      rows = {k: constrain_rows(v) for k, v in gather_rows(tables, micro, N).items()}
      logp, _ = packed_logprobs(graphdef, params, rows["ids"], rows["pos"], rows["seg"],
                                rows["targets"], **score)
      return logp

    return scatter_to_responses(jax.lax.map(one, idx), idx["tgt"], (B, G, N))

  @jax.jit
  def ref_logprobs(params, batch: UpdateBatch | PackedBatch) -> jax.Array:
    packed = batch if isinstance(batch, PackedBatch) else PackedBatch(batch=batch)
    if packed.src is None:
      return padded(params, packed.batch)
    if config.layout is Layout.PADDED:
      raise ValueError("a packed batch for a padded-layout config")
    return packed_layout(params, packed)

  return ref_logprobs
