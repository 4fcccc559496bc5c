"""Flash-style attention in pure JAX: O(T x block) memory in the forward and the backward pass.

Axis letters: B batch, T queries, S keys, K kv heads, G query heads per kv head, H head dim;
bq / bk query / key block lengths, nq = T / bq, nk = S / bk (after padding).

Forward (FlashAttention-2, Alg. 1): for each query block, an online softmax over key blocks keeps
the running max m, the running sum l and the unnormalised output acc in float32, and saves only the
logsumexp lse = m + log l per query. Backward (FA-2, Alg. 2) is a `jax.custom_vjp`: for each key
block, it loops over the query blocks that can see it, recomputes P = exp(q.k / sqrt(H) - lse) from
the saved lse, and accumulates

  dV_j += P^T dO, dP = dO V_j^T, dS = P * (dP - rowsum(dO * O)), dQ_i += dS K_j, dK_j += dS^T Q_i

so neither pass materialises a [T, S] matrix. Under a causal mask the loops skip every block that
lies entirely above the diagonal (about half the FLOPs at T = S).

Mask: query t attends key s iff kv_seg[s] > 0, q_seg[t] == kv_seg[s] and (if causal)
s <= t + offset. A query with no visible key (padding) outputs exactly 0 and gets no gradient.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Int

# Finite rather than -inf, so exp(masked - m) is 0 (not NaN) even when m is itself this value.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _tile_mask(qs_Bxbq: Array, ks_Bxbk: Array, t0: Array, s0: Array, causal: bool,
               offset: int) -> Array:
  """[B, 1, 1, bq, bk] visibility of one (query block, key block) tile."""
  ok = (qs_Bxbq[:, :, None] == ks_Bxbk[:, None, :]) & (ks_Bxbk[:, None, :] > 0)
  if causal:
    t = t0 + jnp.arange(qs_Bxbq.shape[1])
    s = s0 + jnp.arange(ks_Bxbk.shape[1])
    ok = ok & (s[None, None, :] <= t[None, :, None] + offset)
  return ok[:, None, None]


def _scores(q_BxbqxKxGxH: Array, k_BxbkxKxH: Array, scale: float) -> Array:
  s = jnp.einsum("bqkgh,bskh->bkgqs", q_BxbqxKxGxH, k_BxbkxKxH, preferred_element_type=jnp.float32)
  return s * scale


def _kv_end(i: Array, bq: int, bk: int, nk: int, causal: bool, offset: int) -> Array:
  """Number of key blocks query block i needs: the last holds key (i + 1) * bq - 1 + offset."""
  if not causal:
    return jnp.int32(nk)
  return jnp.clip(((i + 1) * bq - 1 + offset) // bk + 1, 0, nk).astype(jnp.int32)


def _q_start(j: Array, bq: int, bk: int, nq: int, causal: bool, offset: int) -> Array:
  """First query block that sees key block j: the one holding query j * bk - offset."""
  if not causal:
    return jnp.int32(0)
  return jnp.clip((j * bk - offset) // bq, 0, nq).astype(jnp.int32)


def _slice(x: Array, start: Array, size: int, axis: int) -> Array:
  return lax.dynamic_slice_in_dim(x, start, size, axis)


def _forward(q, k, v, q_seg, kv_seg, causal, offset, bq, bk):
  """o [B, T, K, G, H] (q's dtype) and lse [B, K, G, T] (float32) of padded inputs."""
  B, T, K, G, H = q.shape
  nq, nk = T // bq, k.shape[1] // bk
  scale = H ** -0.5

  def q_block(i, carry):
    o, lse = carry
    q_i = _slice(q, i * bq, bq, 1)
    qs_i = _slice(q_seg, i * bq, bq, 1)

    def kv_block(j, state):
      m, l, acc = state
      k_j, v_j = _slice(k, j * bk, bk, 1), _slice(v, j * bk, bk, 1)
      ok = _tile_mask(qs_i, _slice(kv_seg, j * bk, bk, 1), i * bq, j * bk, causal, offset)
      s = jnp.where(ok, _scores(q_i, k_j, scale), _MASKED)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + jnp.sum(p, axis=-1)
      pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(v.dtype), v_j,
                      preferred_element_type=jnp.float32)
      return m_new, l, acc * corr[..., None] + pv

    init = (jnp.full((B, K, G, bq), _MASKED, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
            jnp.zeros((B, K, G, bq, H), jnp.float32))
    m, l, acc = lax.fori_loop(0, _kv_end(i, bq, bk, nk, causal, offset), kv_block, init)
    seen = l > 0  # False: no visible key (padding); output 0, lse unused (P is masked to 0)
    l_safe = jnp.where(seen, l, 1.0)
    o_i = jnp.where(seen[..., None], acc / l_safe[..., None], 0.0)
    o_i = jnp.transpose(o_i, (0, 3, 1, 2, 4)).astype(o.dtype)
    lse_i = jnp.where(seen, m + jnp.log(l_safe), 0.0)
    return (lax.dynamic_update_slice_in_dim(o, o_i, i * bq, 1),
            lax.dynamic_update_slice_in_dim(lse, lse_i, i * bq, 3))

  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((B, K, G, T), jnp.float32))
  return lax.fori_loop(0, nq, q_block, init)


def _backward(q, k, v, q_seg, kv_seg, o, lse, do, causal, offset, bq, bk):
  B, T, K, G, H = q.shape
  S = k.shape[1]
  nq, nk = T // bq, S // bk
  scale = H ** -0.5
  # rowsum(dO * O) in float32: the softmax-Jacobian term of every query row.
  D = jnp.einsum("bqkgh,bqkgh->bkgq", do, o, preferred_element_type=jnp.float32)

  def kv_block(j, carry):
    dq, dk, dv = carry
    k_j, v_j = _slice(k, j * bk, bk, 1), _slice(v, j * bk, bk, 1)
    ks_j = _slice(kv_seg, j * bk, bk, 1)

    def q_block(i, state):
      dq, dk_j, dv_j = state
      q_i, do_i = _slice(q, i * bq, bq, 1), _slice(do, i * bq, bq, 1)
      ok = _tile_mask(_slice(q_seg, i * bq, bq, 1), ks_j, i * bq, j * bk, causal, offset)
      s = jnp.where(ok, _scores(q_i, k_j, scale), _MASKED)
      p = jnp.where(ok, jnp.exp(s - _slice(lse, i * bq, bq, 3)[..., None]), 0.0)
      dv_j = dv_j + jnp.einsum("bkgqs,bqkgh->bskh", p.astype(do.dtype), do_i,
                               preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgh,bskh->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = p * (dp - _slice(D, i * bq, bq, 3)[..., None]) * scale
      dq_i = jnp.einsum("bkgqs,bskh->bqkgh", ds.astype(k.dtype), k_j,
                        preferred_element_type=jnp.float32)
      dq = lax.dynamic_update_slice_in_dim(dq, _slice(dq, i * bq, bq, 1) + dq_i, i * bq, 1)
      dk_j = dk_j + jnp.einsum("bkgqs,bqkgh->bskh", ds.astype(q.dtype), q_i,
                               preferred_element_type=jnp.float32)
      return dq, dk_j, dv_j

    zeros = jnp.zeros((B, bk, K, H), jnp.float32)
    start = _q_start(j, bq, bk, nq, causal, offset)
    dq, dk_j, dv_j = lax.fori_loop(start, nq, q_block, (dq, zeros, zeros))
    return (dq, lax.dynamic_update_slice_in_dim(dk, dk_j, j * bk, 1),
            lax.dynamic_update_slice_in_dim(dv, dv_j, j * bk, 1))

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
          jnp.zeros(v.shape, jnp.float32))
  dq, dk, dv = lax.fori_loop(0, nk, kv_block, init)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, q_seg, kv_seg, causal, offset, bq, bk):
  return _forward(q, k, v, q_seg, kv_seg, causal, offset, bq, bk)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, causal, offset, bq, bk):
  o, lse = _forward(q, k, v, q_seg, kv_seg, causal, offset, bq, bk)
  return o, (q, k, v, q_seg, kv_seg, o, lse)


def _flash_bwd(causal, offset, bq, bk, res, do):
  q, k, v, q_seg, kv_seg, o, lse = res
  dq, dk, dv = _backward(q, k, v, q_seg, kv_seg, o, lse, do, causal, offset, bq, bk)
  return dq, dk, dv, None, None  # integer segment ids: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(
    q_BxTxNxH: Array,
    k_BxSxKxH: Array,
    v_BxSxKxH: Array,
    q_seg_BxT: Int[Array, "B T"],
    kv_seg_BxS: Int[Array, "B S"],
    *,
    causal: bool,
    block_q: int = 512,
    block_k: int = 512,
) -> Array:
  """Grouped-query attention [B, T, N, H] without a [T, S] intermediate (see the module doc).

  T and S need not be multiples of the blocks: inputs are padded with segment id 0 (invisible) and
  the output is sliced back. Causal offset = S - T (the last query sees the last key).
  """
  B, T, N, H = q_BxTxNxH.shape
  S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  # Blocks no longer than the (8-rounded) sequence: short inputs run as a single tile.
  bq, bk = min(block_q, _round_up(T, 8)), min(block_k, _round_up(S, 8))
  Tp, Sp = _round_up(T, bq), _round_up(S, bk)
  pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  q = pad(q_BxTxNxH, Tp - T).reshape(B, Tp, K, N // K, H)
  k, v = pad(k_BxSxKxH, Sp - S), pad(v_BxSxKxH, Sp - S)
  q_seg = pad(q_seg_BxT.astype(jnp.int32), Tp - T)
  kv_seg = pad(kv_seg_BxS.astype(jnp.int32), Sp - S)
  o = _flash(q, k, v, q_seg, kv_seg, causal, S - T, bq, bk)
  return o[:, :T].reshape(B, T, N, H)
