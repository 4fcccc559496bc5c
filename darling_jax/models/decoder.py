"""The decoder-only transformer (Llama / SmolLM2 / Qwen2 / Qwen3) in Flax NNX.

Axis letters: B batch, T query length, S key/value length (cache slots), D model width, F MLP width,
N query heads, K key/value heads, G = N // K heads per KV head, H head dim, V vocab, L layers.

Layers are stored stacked ([L, ...] parameters with the logical axis "layers") and run under
`jax.lax.scan`, so compile time does not grow with depth. Every parameter carries logical axis names;
`darling_jax.sharding.state_shardings` maps them onto a mesh.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int

from darling_jax.models.attention import attention, check_impl, masked_attention
from darling_jax.models.decoder_config import DecoderConfig, rope_inv_freq

@flax.struct.dataclass
class KVCache:
  """Keys/values of every layer: k, v [L, B, S, K, H]. Slot s of row b is valid iff kv_mask[b, s]."""

  k: Array
  v: Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


def _param(rngs: nnx.Rngs, kind: str, shape: tuple[int, ...], names: tuple[str | None, ...],
           dtype) -> nnx.Param:
  match kind:
    case "normal":
      value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    case "ones":
      value = jnp.ones(shape, jnp.float32)
    case "zeros":
      value = jnp.zeros(shape, jnp.float32)
    case _:
      raise ValueError(kind)
  return nnx.Param(value.astype(dtype), sharding_names=names, eager_sharding=False)


class DecoderLayers(nnx.Module):
  """All L transformer blocks' parameters, stacked on a leading layer axis."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    L, D, F, N, K, H = (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                        cfg.num_kv_heads, cfg.head_dim)
    p = lambda kind, shape, names: _param(rngs, kind, shape, names, param_dtype)  # noqa: E731
    self.attn_norm = p("ones", (L, D), ("layers", None))
    self.q = p("normal", (L, D, N, H), ("layers", "embed", "heads", "head_dim"))
    self.k = p("normal", (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
    self.v = p("normal", (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
    self.o = p("normal", (L, N, H, D), ("layers", "heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      self.q_bias = p("zeros", (L, N, H), ("layers", "heads", "head_dim"))
      self.k_bias = p("zeros", (L, K, H), ("layers", "kv_heads", "head_dim"))
      self.v_bias = p("zeros", (L, K, H), ("layers", "kv_heads", "head_dim"))
    if cfg.o_bias:
      self.o_bias = p("zeros", (L, D), ("layers", None))
    if cfg.qk_norm:
      self.q_norm = p("ones", (L, H), ("layers", None))
      self.k_norm = p("ones", (L, H), ("layers", None))
    self.mlp_norm = p("ones", (L, D), ("layers", None))
    self.gate = p("normal", (L, D, F), ("layers", "embed", "mlp"))
    self.up = p("normal", (L, D, F), ("layers", "embed", "mlp"))
    self.down = p("normal", (L, F, D), ("layers", "mlp", "embed"))
    if cfg.mlp_bias:
      self.gate_bias = p("zeros", (L, F), ("layers", "mlp"))
      self.up_bias = p("zeros", (L, F), ("layers", "mlp"))
      self.down_bias = p("zeros", (L, D), ("layers", None))

  def stacked(self) -> dict[str, Array]:
    """{name: [L, ...] array} of every present parameter (the scan's per-layer input)."""
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


def _lead(w: Array, x: Array) -> Array:
  """`w` with leading unit dims to x's rank, cast to x's dtype (explicit: rank promotion is off)."""
  return w.astype(x.dtype).reshape((1,) * (x.ndim - w.ndim) + w.shape)


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
  # Statistics in float32: bf16's 8-bit mantissa loses the mean of squares over wide rows.
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return normed.astype(x.dtype) * _lead(weight, x)


def rope_angles(positions_BxT: Int[Array, "B T"], inv_freq_Hh: Array) -> tuple[Array, Array]:
  # Angles in float32: positions up to 1e5 times frequencies need more than bf16's 3 digits.
  ang = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_Hh[None, None, :]
  ang = jnp.concatenate([ang, ang], axis=-1)  # [B, T, H] in rotate-half layout
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_BxTxNxH: Array, cos_BxTxH: Array, sin_BxTxH: Array) -> Array:
  half = x_BxTxNxH.shape[-1] // 2
  x = x_BxTxNxH.astype(jnp.float32)
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_BxTxH[:, :, None, :] + rotated * sin_BxTxH[:, :, None, :]
  return out.astype(x_BxTxNxH.dtype)


def attend(q_BxTxNxH: Array, k_BxSxKxH: Array, v_BxSxKxH: Array,
           mask_BxTxS: Bool[Array, "B T S"]) -> Array:
  """Grouped-query softmax attention under an explicit mask (the decode steps over cache slots)."""
  return masked_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS)


def project_qkv(cfg: DecoderConfig, lp: dict[str, Array], h_BxTxD: Array, cos: Array, sin: Array):
  """Normalised input -> RoPE'd q [B,T,N,H], k [B,T,K,H], v [B,T,K,H]."""
  dt = h_BxTxD.dtype
  q = jnp.einsum("btd,dnh->btnh", h_BxTxD, lp["q"].astype(dt))
  k = jnp.einsum("btd,dkh->btkh", h_BxTxD, lp["k"].astype(dt))
  v = jnp.einsum("btd,dkh->btkh", h_BxTxD, lp["v"].astype(dt))
  if cfg.qkv_bias:
    q, k, v = q + _lead(lp["q_bias"], q), k + _lead(lp["k_bias"], k), v + _lead(lp["v_bias"], v)
  if cfg.qk_norm:
    q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attn_out_and_mlp(cfg: DecoderConfig, lp: dict[str, Array], x_BxTxD: Array,
                     attn_BxTxNxH: Array) -> Array:
  """Residual stream after the attention output projection and the SwiGLU MLP."""
  dt = x_BxTxD.dtype
  o = jnp.einsum("btnh,nhd->btd", attn_BxTxNxH, lp["o"].astype(dt))
  if cfg.o_bias:
    o = o + _lead(lp["o_bias"], o)
  x = x_BxTxD + o
  h = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps)
  gate = jnp.einsum("btd,df->btf", h, lp["gate"].astype(dt))
  up = jnp.einsum("btd,df->btf", h, lp["up"].astype(dt))
  if cfg.mlp_bias:
    gate, up = gate + _lead(lp["gate_bias"], gate), up + _lead(lp["up_bias"], up)
  down = jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, lp["down"].astype(dt))
  if cfg.mlp_bias:
    down = down + _lead(lp["down_bias"], down)
  return x + down


def positions_from_mask(mask_BxT: Array) -> Int[Array, "B T"]:
  """Position ids that skip left padding: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


class Decoder(nnx.Module):
  """Causal LM: `model(input_ids, attention_mask=mask) -> logits [B, T, V]` (float32)."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
               dtype=jnp.float32, remat: bool = False, attention: str = "auto",
               attention_mesh: Mesh | None = None):
    self.config = config
    self.dtype = dtype  # compute (activation) dtype
    self.remat = remat  # recompute each block in the backward pass (training memory)
    # Backend of the full-sequence attention (hidden_states, prefill); see models/attention.py.
    self.attention = check_impl(attention, "Decoder.attention")
    # The mesh splash's shard_map splits over (batch, kv heads); None: the ambient
    # `jax.set_mesh` mesh, else one device. Static, like `attention`.
    self.attention_mesh = attention_mesh
    self.embed = _param(rngs, "normal", (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                        param_dtype)
    self.layers = DecoderLayers(config, rngs=rngs, param_dtype=param_dtype)
    self.final_norm = _param(rngs, "ones", (config.hidden_size,), (None,), param_dtype)
    if not config.tie_word_embeddings:
      self.lm_head = _param(rngs, "normal", (config.hidden_size, config.vocab_size),
                            ("embed", "vocab"), param_dtype)

  # ---- building blocks shared by the full and the cached forward ---------------------------------

  def _inv_freq(self) -> Array:
    return jnp.asarray(rope_inv_freq(self.config), jnp.float32)

  def embed_tokens(self, tokens_BxT: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    return jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.dtype)

  def head_weight(self) -> Float[Array, "D V"]:
    return self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]

  def logits(self, hidden_BxTxD: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    out = jnp.einsum("btd,dv->btv", hidden_BxTxD, self.head_weight().astype(hidden_BxTxD.dtype),
                     preferred_element_type=jnp.float32)
    return out

  def _scan_blocks(self, block_fn, x_BxTxD: Array, extra_xs: Any = None):
    fn = jax.checkpoint(block_fn) if self.remat else block_fn
    return jax.lax.scan(fn, x_BxTxD, (self.layers.stacked(), extra_xs))

  # ---- full-sequence forward ---------------------------------------------------------------------

  def hidden_states(
      self,
      input_ids: Int[Array, "B T"],
      attention_mask: Int[Array, "B T"] | None = None,
      positions: Int[Array, "B T"] | None = None,
      inputs_embeds: Float[Array, "B T D"] | None = None,
      segment_ids: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B T D"]:
    """Final-norm hidden states under a causal + padding mask (left or right padding).

    `inputs_embeds` replaces the token embedding lookup (as in HF), e.g. for gradient probes.
    `segment_ids` packs several sequences into one row: token t attends to s <= t with the same
    segment id; id 0 is padding (never attended). Packed rows need per-segment `positions`;
    `attention_mask` is then ignored (segment id 0 is the padding).
    """
    cfg = self.config
    tokens = jnp.asarray(input_ids, jnp.int32)
    if segment_ids is not None:
      if positions is None:
        raise ValueError("packed rows (segment_ids) need per-segment positions")
      seg = jnp.asarray(segment_ids, jnp.int32)
      pos = jnp.asarray(positions, jnp.int32)
    else:
      mask = (jnp.ones_like(tokens, dtype=bool) if attention_mask is None
              else jnp.asarray(attention_mask).astype(bool))
      pos = positions_from_mask(mask) if positions is None else jnp.asarray(positions, jnp.int32)
      # One segment per row; padding (either side) is segment 0, whose rows attend to nothing.
      seg = mask.astype(jnp.int32)
    cos, sin = rope_angles(pos, self._inv_freq())

    def block(x, xs):
      lp, _ = xs
      h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
      q, k, v = project_qkv(cfg, lp, h, cos, sin)
      out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True,
                      impl=self.attention, mesh=self.attention_mesh)
      return attn_out_and_mlp(cfg, lp, x, out), None

    x = self.embed_tokens(tokens) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    x, _ = self._scan_blocks(block, x)
    return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)

  def __call__(self, input_ids, attention_mask=None, positions=None) -> Float[Array, "B T V"]:
    """Logits [B, T, V] (float32); array-likes in. Compiled once per input shape."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    pos = None if positions is None else jnp.asarray(positions, jnp.int32)
    graphdef, state = nnx.split(self)
    return _jitted_logits(graphdef, state, ids, mask, pos)

  # ---- KV-cache forward --------------------------------------------------------------------------

  def init_cache(self, batch: int, max_len: int, dtype=jnp.bfloat16) -> KVCache:
    c = self.config
    shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))

  def extend(
      self,
      tokens_BxT: Int[Array, "B T"],
      positions_BxT: Int[Array, "B T"],
      cache: KVCache,
      index: Int[Array, ""],
      kv_mask_BxS: Bool[Array, "B S"],
  ) -> tuple[Float[Array, "B T D"], KVCache]:
    """Runs T new tokens, writing their K/V into cache slots [index, index + T).

    Token t attends to slots s with kv_mask[b, s] and s <= index + t; the caller marks the new
    slots valid in `kv_mask_BxS` (left-padded prompts leave their pad slots invalid).
    Returns final-norm hidden states (apply `logits` to the positions you need) and the new cache.
    """
    cfg = self.config
    T = tokens_BxT.shape[1]
    S = cache.max_len
    slot_S = jnp.arange(S)
    query_slot_T = index + jnp.arange(T)
    mask_BxTxS = kv_mask_BxS[:, None, :] & (slot_S[None, None, :] <= query_slot_T[None, :, None])
    cos, sin = rope_angles(positions_BxT, self._inv_freq())

    def block(x, xs):
      lp, (k_cache, v_cache) = xs
      h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
      q, k, v = project_qkv(cfg, lp, h, cos, sin)
      k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), index, axis=1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), index, axis=1)
      out = attend(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask_BxTxS)
      return attn_out_and_mlp(cfg, lp, x, out), (k_cache, v_cache)

    x, (k_new, v_new) = self._scan_blocks(block, self.embed_tokens(tokens_BxT), (cache.k, cache.v))
    return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), KVCache(k=k_new, v=v_new)


  def prefill(
      self,
      tokens_BxT: Int[Array, "B T"],
      positions_BxT: Int[Array, "B T"],
      cache: KVCache,
      mask_BxT: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], KVCache]:
    """`extend(tokens, positions, cache, 0, kv_mask)` for a fresh cache, via the attention backend.

    The T tokens attend only to each other (causal, `mask_BxT` False = padding), so the backend
    (`self.attention`: blockwise/splash for long prompts) runs over [T, T] instead of the
    einsum over [T, S] cache slots; their K/V are then written to cache slots [0, T).
    """
    cfg = self.config
    seg = jnp.asarray(mask_BxT).astype(jnp.int32)
    cos, sin = rope_angles(positions_BxT, self._inv_freq())

    def block(x, xs):
      lp, (k_cache, v_cache) = xs
      h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
      q, k, v = project_qkv(cfg, lp, h, cos, sin)
      k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)
      k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, 0, axis=1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, 0, axis=1)
      # Attend the cache-dtype K/V, as `extend` does, so both paths give the same logits.
      out = attention(q, k.astype(q.dtype), v.astype(q.dtype), q_segment_ids=seg,
                      kv_segment_ids=seg, causal=True, impl=self.attention,
                      mesh=self.attention_mesh)
      return attn_out_and_mlp(cfg, lp, x, out), (k_cache, v_cache)

    x, (k_new, v_new) = self._scan_blocks(block, self.embed_tokens(tokens_BxT), (cache.k, cache.v))
    return rms_norm(x, self.final_norm[...], cfg.rms_norm_eps), KVCache(k=k_new, v=v_new)

@functools.partial(jax.jit, static_argnums=0)
def _jitted_logits(graphdef, state, ids, mask, pos):
  # Eager op-by-op execution of 30 scanned layers costs seconds per call; this compiles once per
  # shape. A pure split/merge function (not nnx.jit) so it also nests inside users' jax.jit/grad.
  model = nnx.merge(graphdef, state)
  return model.logits(model.hidden_states(ids, mask, pos))
