"""Per-token log-probs and entropies of given targets, without materialising [S, T, V] logits.

Axis letters: S sequences, T target positions, C chunks of T, D width, V vocab.

The LM head and log-softmax run over chunks of positions under `jax.checkpoint`, so neither the
forward nor the backward pass ever holds more than [S, chunk, V] logits (Qwen3's V = 151,936 times
8k tokens would otherwise be tens of GB per sequence batch).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def token_logprobs(
    hidden_SxTxD: Float[Array, "S T D"],
    head_DxV: Float[Array, "D V"],
    targets_SxT: Int[Array, "S T"],
    *,
    temperature: float = 1.0,
    chunk: int = 128,
    with_entropy: bool = True,
) -> tuple[Float[Array, "S T"], Float[Array, "S T"] | None]:
  """log softmax(h @ W / temperature)[target] and the entropy of that distribution, per position.

  Logits, log-sum-exp and entropy are computed in float32 (bf16 log-probs are off by ~1e-2, which
  would show up directly in the PPO ratio).
  """
  S, T, D = hidden_SxTxD.shape
  chunk = min(chunk, T)
  C = -(-T // chunk)
  pad = C * chunk - T
  h = jnp.pad(hidden_SxTxD, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(targets_SxT, ((0, 0), (0, pad)))
  h_CxSxcxD = h.reshape(S, C, chunk, D).swapaxes(0, 1)
  t_CxSxc = t.reshape(S, C, chunk).swapaxes(0, 1)
  inv_temp = jnp.float32(1.0 / temperature)

  @jax.checkpoint
  def one_chunk(args):
    h_c, t_c = args
    logits = jnp.einsum("scd,dv->scv", h_c, head_DxV.astype(h_c.dtype),
                        preferred_element_type=jnp.float32) * inv_temp
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
    logp = picked - lse
    if not with_entropy:
      return logp, jnp.zeros_like(logp)
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logp, entropy

  logp_C, ent_C = jax.lax.map(one_chunk, (h_CxSxcxD, t_CxSxc))
  logp = logp_C.swapaxes(0, 1).reshape(S, C * chunk)[:, :T]
  ent = ent_C.swapaxes(0, 1).reshape(S, C * chunk)[:, :T]
  return logp, (ent if with_entropy else None)
