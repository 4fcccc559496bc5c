"""Device side of the bucketed / packed layouts: gather a micro-batch's rows, score them.

Axis letters: B prompts, G rollouts, P prompt columns, N response columns, R rows of one
micro-batch, T row length, D width.

The step's arrays stay in their [B, G, N] layout; the host plan (rl/packing.py) only says, per row
column, which flat element to read (`src` into the [B*G, P+N] token table, `tgt` into the [B*G, N]
response arrays). Advantages are computed on [B, G] as in the padded step and reach the tokens
through tgt // N, the sequence index b * G + g.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from darling_jax.models.logprobs import token_logprobs
from darling_jax.rl.state import UpdateBatch


def token_tables(batch: UpdateBatch, extra_BxG: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Flat tables the index arrays point into: tokens [B*G*(P+N)], response arrays [B*G*N],
  per-sequence arrays [B*G] (`extra_BxG`, e.g. advantages) and seq_tokens [B*G]."""
  B, G, N = batch.response_ids.shape
  ids = jnp.concatenate([jnp.repeat(batch.prompt_ids[:, None], G, axis=1).astype(jnp.int32),
                         batch.response_ids.astype(jnp.int32)], axis=2)
  tables = {"tokens": ids.reshape(-1), "response_ids": batch.response_ids.reshape(-1),
            "old_logprobs": batch.old_logprobs.reshape(-1),
            "seq_tokens": jnp.sum(batch.response_mask, axis=-1, dtype=jnp.int32).reshape(-1)}
  if batch.ref_logprobs is not None:
    tables["ref_logprobs"] = batch.ref_logprobs.reshape(-1)
  for k, v in extra_BxG.items():
    chex.assert_shape(v, (B, G))
    tables[k] = v.reshape(-1)
  return tables


def gather_rows(tables: dict[str, jax.Array], idx: dict[str, jax.Array],
                N: int) -> dict[str, jax.Array]:
  """One micro-batch's [R, T] inputs from its index arrays (src, tgt, seg, pos).

  Returns ids, pos, seg, targets, mask (column predicts a real response token), seq (its sequence
  b * G + g; 0 where masked), old_logprobs, ref_logprobs and every per-sequence table (gathered
  per token). Masked columns hold finite placeholders, never read unmasked.
  """
  src, tgt = idx["src"], idx["tgt"]
  chex.assert_equal_shape([src, tgt, idx["seg"], idx["pos"]])
  mask = tgt >= 0
  t = jnp.maximum(tgt, 0)
  seq = t // N
  out = {"ids": jnp.where(src >= 0, tables["tokens"][jnp.maximum(src, 0)], 0),
         "pos": idx["pos"], "seg": idx["seg"], "mask": mask, "seq": seq,
         "targets": jnp.where(mask, tables["response_ids"][t], 0),
         "old_logprobs": jnp.where(mask, tables["old_logprobs"][t], 0.0)}
  if "ref_logprobs" in tables:
    out["ref_logprobs"] = jnp.where(mask, tables["ref_logprobs"][t], 0.0)
  for k, v in tables.items():
    if k not in ("tokens", "response_ids", "old_logprobs", "ref_logprobs", "seq_tokens"):
      out[k] = v[seq]
  return out


def packed_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    ids_RxT: jax.Array,
    pos_RxT: jax.Array,
    seg_RxT: jax.Array,
    targets_RxT: jax.Array,
    *,
    temperature: float = 1.0,
    chunk: int = 128,
    with_entropy: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
  """log pi(targets[r, t] | its segment up to column t) [R, T] (+ entropies) over packed rows.

  Every column goes through the LM head (prompt columns too), in chunks of `chunk` columns.
  """
  model = nnx.merge(graphdef, params)
  hidden_RxTxD = model.hidden_states(ids_RxT, positions=pos_RxT, segment_ids=seg_RxT)
  # Equal chunks covering T: a bucket length such as 544 would pad to 640 columns with 128.
  T = ids_RxT.shape[1]
  chunk = -(-T // -(-T // max(1, min(chunk, T))))
  return token_logprobs(hidden_RxTxD, model.head_weight(), targets_RxT, temperature=temperature,
                        chunk=chunk, with_entropy=with_entropy)


def scatter_to_responses(values_KxRxT: jax.Array, tgt_KxRxT: jax.Array,
                         shape_BxGxN: tuple[int, int, int]) -> jax.Array:
  """Per-column values back to [B, G, N] (each real response token is predicted by exactly one
  column); tokens no column predicts (padding) get 0."""
  size = shape_BxGxN[0] * shape_BxGxN[1] * shape_BxGxN[2]
  where = jnp.where(tgt_KxRxT >= 0, tgt_KxRxT, size).reshape(-1)  # size: dropped
  out = jnp.zeros((size,), values_KxRxT.dtype).at[where].set(values_KxRxT.reshape(-1), mode="drop")
  return out.reshape(shape_BxGxN)
