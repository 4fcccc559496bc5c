"""DeBERTa-v2 / v3 encoder in Flax NNX, loading and exporting Hugging Face checkpoints.

The maths (transformers' modeling_deberta_v2, matched to 1e-4 in float32 by the tests), post-LN:
  x = LN_e(proj(E_w[ids] + E_p[pos] + E_t[tt])) * m   (E_p iff position_biased_input, E_t iff
                                                       type_vocab_size > 0, proj iff widths differ)
  per layer:  a = LN(x + W_o Attn(x)),  x = LN(a + W_2 act(a W_1))
  after layer 0 only, when conv_kernel_size > 0:  x = LN(x + conv_act(Conv1d(x_emb) * m)) * m.
Disentangled attention with relative buckets delta(i, j) (log-bucketed beyond position_buckets / 2),
k = 2 * span (span = position_buckets, else max_relative_positions) relative embeddings P
(LN'd iff norm_rel_ebd has layer_norm), s = sqrt(H * (1 + [c2p] + [p2c])):
  A_ij = q_i . k_j / s  +  q_i . K_r[clip(delta(i, j) + span)] / s            (c2p)
                        +  k_j . Q_r[clip(-delta(j, i) + span)] / s           (p2c)
with K_r = P W_k^r, Q_r = P W_q^r (the content W_k, W_q when share_att_key). Keys and queries
outside the mask are dropped (a padding query's row is uniform, as in HF). Classification: pooled =
pooler_act(h[:, 0] W_p + b_p) (ContextPooler), logits = pooled W_c + b_c.

The layers are homogeneous, so they are stacked and scanned; the v2 ConvLayer follows layer 0
only, so layer 0 runs before the scan when it is present.

Axes: B batch, L query length, S key length, D width, E embedding width, N heads, H head dim,
F MLP width, V vocab, K relative embeddings (2 * span), C labels, R layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError
from darling_jax.models.encoders.hf_encoder import (
    ACTIVATIONS, HfTensor, Layout, add_bias, check_fields, export_folder, hf_num_labels,
    ParamMaker, layer_norm, masked_mean, split_known, with_head_fields, load_family)
from darling_jax.sharding import CLASSIFIER_RULES, LogicalRules

MODEL_TYPE = "deberta-v2"
_PASSTHROUGH = ("hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout",
                "cls_dropout", "legacy")
_IGNORED = ("pooler_hidden_size", "z_steps")


@dataclasses.dataclass(frozen=True)
class Config:
  """A DeBERTa-v2/v3 checkpoint's shape and options (HF field names)."""

  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1  # < 1: max_position_embeddings
  position_buckets: int = -1  # <= 0: no log buckets, span = max_relative_positions
  position_biased_input: bool = True
  pos_att_type: tuple[str, ...] = ()  # subset of ("c2p", "p2c"), in HF's order
  share_att_key: bool = False
  norm_rel_ebd: str = "none"  # "none" or "layer_norm"
  attention_head_size: int = 0  # 0: hidden_size // num_attention_heads
  embedding_size: int = 0  # 0: hidden_size
  conv_kernel_size: int = 0  # 0: no ConvLayer (v3)
  conv_groups: int = 1
  conv_act: str = "tanh"
  pooler_hidden_act: str = "gelu"
  pad_token_id: int = 0
  num_labels: int | None = None  # None: bare encoder; else a C-way classification head
  passthrough: str = "{}"  # JSON of the accepted-but-unused HF fields, written back on export

  def __post_init__(self):
    check_fields(self, may_be_negative=("max_relative_positions", "position_buckets"))
    if isinstance(self.pos_att_type, str):
      object.__setattr__(self, "pos_att_type", tuple(
          t.strip() for t in self.pos_att_type.lower().split("|") if t.strip()))
    if not isinstance(self.pos_att_type, (tuple, list)) or set(self.pos_att_type) - {"c2p", "p2c"}:
      raise InputError("pos_att_type", f"{self.pos_att_type!r}: only 'c2p' and 'p2c' are supported")
    object.__setattr__(self, "pos_att_type", tuple(self.pos_att_type))
    norms = {t.strip() for t in self.norm_rel_ebd.lower().split("|")}
    if norms - {"none", "layer_norm"}:
      raise InputError("norm_rel_ebd", f"{self.norm_rel_ebd!r} is not 'none' or 'layer_norm'")
    for field in ("hidden_act", "conv_act", "pooler_hidden_act"):
      if getattr(self, field) not in ACTIVATIONS:
        raise InputError(field, f"unsupported activation {getattr(self, field)!r}")
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "conv_groups"):
      if getattr(self, field) < 1:
        raise InputError(field, f"must be at least 1, got {getattr(self, field)}")
    if self.hidden_size % self.num_attention_heads:  # HF requires it even with attention_head_size
      raise InputError("num_attention_heads", f"{self.num_attention_heads} does not divide "
                       f"hidden_size {self.hidden_size}")
    if self.head_dim * self.num_attention_heads != self.hidden_size:
      raise InputError("attention_head_size", f"{self.attention_head_size} x "
                       f"{self.num_attention_heads} heads must equal hidden_size "
                       f"{self.hidden_size}")
    if self.conv_kernel_size and (self.conv_kernel_size % 2 == 0
                                  or self.hidden_size % max(self.conv_groups, 1)):
      raise InputError("conv_kernel_size", f"kernel {self.conv_kernel_size} must be odd and "
                       f"conv_groups {self.conv_groups} must divide hidden_size")

  @property
  def head_dim(self) -> int:
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def embed_width(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def max_relative(self) -> int:
    return self.max_relative_positions if self.max_relative_positions >= 1 else (
        self.max_position_embeddings)

  @property
  def span(self) -> int:
    """Relative distances kept on each side; the table holds 2 * span embeddings."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative

  @property
  def rel_layer_norm(self) -> bool:
    return "layer_norm" in {t.strip() for t in self.norm_rel_ebd.lower().split("|")}

  @classmethod
  def tiny(cls, num_labels: int | None = 2) -> Config:
    """A v3-style toy: relative attention with buckets, shared keys, c2p + p2c, no absolute pos."""
    return cls(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64, relative_attention=True,
               position_buckets=8, position_biased_input=False, pos_att_type=("p2c", "c2p"),
               share_att_key=True, norm_rel_ebd="layer_norm", num_labels=num_labels)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> Config:
    """Validates a HF config.json dict; unknown or unsupported options raise InputError."""
    d = dict(hf)
    if d.get("model_type") != MODEL_TYPE:
      raise InputError(f"{source}: model_type", f"is {d.get('model_type')!r}, not {MODEL_TYPE!r}")
    names = {f.name for f in dataclasses.fields(cls)} - {"num_labels", "passthrough"}
    kw = {k: v for k in list(d) if k in names and (v := d.pop(k)) is not None}
    pooler = d.get("pooler_hidden_size", kw.get("hidden_size", cls.hidden_size))
    if pooler != kw.get("hidden_size", cls.hidden_size):
      raise InputError(f"{source}: pooler_hidden_size", f"{pooler} must equal hidden_size")
    kw["num_labels"] = hf_num_labels(hf)
    kw["passthrough"] = split_known(d, _PASSTHROUGH, _IGNORED, "DeBERTa-v2", source)
    try:
      return cls(**kw)
    except InputError as e:
      raise InputError(f"{source}: {e.where}", e.problem) from None

  def to_hf(self) -> dict[str, Any]:
    """The HF config.json dict (optional sizes written only when set)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for k in ("passthrough", "num_labels") + tuple(
        k for k in ("attention_head_size", "embedding_size") if not d[k]):
      d.pop(k)
    d.update(json.loads(self.passthrough), model_type=MODEL_TYPE,
             pos_att_type=list(self.pos_att_type), pooler_hidden_size=self.hidden_size)
    return with_head_fields(d, "DebertaV2", self.num_labels)


def relative_buckets(L: int, bucket_size: int, max_position: int) -> np.ndarray:
  """delta[i, j] = i - j, log-bucketed past bucket_size / 2 (HF's make_log_bucket_position, in
  float32 exactly as torch computes it so bucket boundaries agree)."""
  pos = np.arange(L, dtype=np.int64)
  rel = pos[:, None] - pos[None, :]
  if bucket_size <= 0 or max_position <= 0:
    return rel
  mid = bucket_size // 2
  abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):  # degenerate tiny buckets, as in torch
    denom = np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(np.log(abs_pos / np.float32(mid)) / denom * np.float32(mid - 1)) + mid
  return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * np.sign(rel)).astype(np.int64)


class Model(nnx.Module):
  """DeBERTa-v2/v3 (+ ContextPooler and classifier when config.num_labels is set)."""

  def __init__(self, config: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
    self.config = c = config
    D, E, F, N, H, R = (c.hidden_size, c.embed_width, c.intermediate_size, c.num_attention_heads,
                        c.head_dim, c.num_hidden_layers)
    p = ParamMaker(dtype)
    self.word_embeddings = p((c.vocab_size, E), ("vocab", "embed"))
    if c.position_biased_input:
      self.position_embeddings = p((c.max_position_embeddings, E), (None, "embed"))
    if c.type_vocab_size:
      self.token_type_embeddings = p((c.type_vocab_size, E), (None, "embed"))
    if E != D:
      self.embed_proj = p((E, D), (None, "embed"))
    self.emb_norm, self.emb_norm_bias = p((D,), ("embed",), "ones"), p((D,), ("embed",), "zeros")
    qkv = lambda: p((R, D, N, H), ("layers", "embed", "heads", "head_dim"))
    qkv_b = lambda: p((R, N, H), ("layers", "heads", "head_dim"), "zeros")
    vec = lambda init="zeros": p((R, D), ("layers", "embed"), init)
    stacked = dict(
        wq=qkv(), bq=qkv_b(), wk=qkv(), bk=qkv_b(), wv=qkv(), bv=qkv_b(),
        wo=p((R, N, H, D), ("layers", "heads", "head_dim", "embed")), bo=vec(),
        attn_norm=vec("ones"), attn_norm_bias=vec(),
        wi=p((R, D, F), ("layers", "embed", "mlp")), bi=p((R, F), ("layers", "mlp"), "zeros"),
        wo_mlp=p((R, F, D), ("layers", "mlp", "embed")), bo_mlp=vec(),
        out_norm=vec("ones"), out_norm_bias=vec())
    if c.relative_attention and not c.share_att_key:
      if "c2p" in c.pos_att_type:
        stacked.update(wk_pos=qkv(), bk_pos=qkv_b())
      if "p2c" in c.pos_att_type:
        stacked.update(wq_pos=qkv(), bq_pos=qkv_b())
    self.layers = nnx.Dict(stacked)
    if c.relative_attention:
      self.rel_embeddings = p((2 * c.span, D), (None, "embed"))
      if c.rel_layer_norm:
        self.rel_norm = p((D,), ("embed",), "ones")
        self.rel_norm_bias = p((D,), ("embed",), "zeros")
    if c.conv_kernel_size:
      self.conv = p((c.conv_kernel_size, D // c.conv_groups, D), (None, None, "embed"))
      self.conv_bias = p((D,), ("embed",), "zeros")
      self.conv_norm = p((D,), ("embed",), "ones")
      self.conv_norm_bias = p((D,), ("embed",), "zeros")
    if c.num_labels:
      self.pooler, self.pooler_bias = p((D, D), ("embed", None)), p((D,), (None,), "zeros")
      self.classifier = p((D, c.num_labels), ("embed", None))
      self.classifier_bias = p((c.num_labels,), (None,), "zeros")
    p.draw(rngs)

  def _layer(self, p: dict[str, Array], x_BxLxD: Array, visible_Bx1xLxS: Array,
             rel_KxD: Array | None, idx_LxS: Array | None) -> Array:
    c = self.config
    proj = lambda x, w, b: add_bias(jnp.einsum("...d,dnh->...nh", x, p[w]), p[b])
    q, k, v = proj(x_BxLxD, "wq", "bq"), proj(x_BxLxD, "wk", "bk"), proj(x_BxLxD, "wv", "bv")
    scale = np.sqrt(np.float32(c.head_dim * (1 + len(c.pos_att_type))))
    scores = jnp.einsum("blnh,bsnh->bnls", q, k / scale.astype(k.dtype)).astype(jnp.float32)
    if c.relative_attention:
      shared = c.share_att_key
      B, N, L, S = scores.shape
      if "c2p" in c.pos_att_type:
        k_pos = proj(rel_KxD, "wk", "bk") if shared else proj(rel_KxD, "wk_pos", "bk_pos")
        c2p_BxNxLxK = jnp.einsum("blnh,knh->bnlk", q, k_pos).astype(jnp.float32)
        c2p_idx = jnp.clip(idx_LxS + c.span, 0, 2 * c.span - 1)
        scores += jnp.take_along_axis(
            c2p_BxNxLxK, jnp.broadcast_to(c2p_idx[None, None], (B, N, L, S)), axis=-1) / scale
      if "p2c" in c.pos_att_type:
        q_pos = proj(rel_KxD, "wq", "bq") if shared else proj(rel_KxD, "wq_pos", "bq_pos")
        p2c_BxNxSxK = jnp.einsum("bsnh,knh->bnsk", k, q_pos).astype(jnp.float32)
        p2c_idx = jnp.clip(-idx_LxS + c.span, 0, 2 * c.span - 1)  # row = key, column = query
        p2c_BxNxSxL = jnp.take_along_axis(
            p2c_BxNxSxK, jnp.broadcast_to(p2c_idx[None, None], (B, N, S, L)), axis=-1)
        scores += jnp.swapaxes(p2c_BxNxSxL, -1, -2) / scale
    scores = jnp.where(visible_Bx1xLxS, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    ctx = jnp.einsum("bnls,bsnh->blnh", probs, v)
    attn = add_bias(jnp.einsum("blnh,nhd->bld", ctx, p["wo"]), p["bo"])
    a = layer_norm(attn + x_BxLxD, p["attn_norm"], p["attn_norm_bias"], c.layer_norm_eps)
    mid = ACTIVATIONS[c.hidden_act](add_bias(a @ p["wi"], p["bi"]))
    return layer_norm(add_bias(mid @ p["wo_mlp"], p["bo_mlp"]) + a, p["out_norm"],
                      p["out_norm_bias"], c.layer_norm_eps)

  def _conv(self, emb_BxLxD: Array, x_BxLxD: Array, valid_BxLx1: Array) -> Array:
    """HF ConvLayer: LN(x + act(conv(embeddings) zeroed at padding)) zeroed at padding."""
    c = self.config
    pad = (c.conv_kernel_size - 1) // 2
    out = jax.lax.conv_general_dilated(
        emb_BxLxD, self.conv[...], window_strides=(1,), padding=[(pad, pad)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=c.conv_groups)
    out = ACTIVATIONS[c.conv_act](jnp.where(valid_BxLx1, add_bias(out, self.conv_bias[...]), 0.0))
    y = layer_norm(x_BxLxD + out, self.conv_norm[...], self.conv_norm_bias[...], c.layer_norm_eps)
    return y * valid_BxLx1.astype(y.dtype)

  def __call__(
      self, input_ids: Int[Array, "B L"], attention_mask: Int[Array, "B L"],
      token_type_ids: Int[Array, "B L"] | None = None,
  ) -> tuple[Float[Array, "B C"] | None, dict[str, Array]]:
    """(logits or None, {"hidden", "pooled", "mean", "pre_logits"})."""
    c = self.config
    chex.assert_rank([input_ids, attention_mask], 2)
    chex.assert_equal_shape([input_ids, attention_mask])
    L = input_ids.shape[1]
    if c.position_biased_input and L > c.max_position_embeddings:
      raise InputError("input_ids", f"length {L} > max_position_embeddings "
                       f"{c.max_position_embeddings}")
    valid_BxL = attention_mask.astype(bool)
    valid_BxLx1 = valid_BxL[:, :, None]
    e = self.word_embeddings[...][input_ids]
    if c.position_biased_input:
      e = e + self.position_embeddings[...][None, :L]
    if c.type_vocab_size:
      tt = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
      e = e + self.token_type_embeddings[...][tt]
    if hasattr(self, "embed_proj"):
      e = e @ self.embed_proj[...]
    emb = layer_norm(e, self.emb_norm[...], self.emb_norm_bias[...], c.layer_norm_eps)
    emb = emb * valid_BxLx1.astype(emb.dtype)
    # HF masks keys and queries: a padding query attends to nothing (uniform row).
    visible = valid_BxL[:, None, :, None] & valid_BxL[:, None, None, :]
    rel, idx = None, None
    if c.relative_attention:
      rel = self.rel_embeddings[...]
      if c.rel_layer_norm:
        rel = layer_norm(rel, self.rel_norm[...], self.rel_norm_bias[...], c.layer_norm_eps)
      idx = jnp.asarray(relative_buckets(L, c.position_buckets, c.max_relative), jnp.int32)
    stack = {k: v[...] for k, v in self.layers.items()}
    x = emb
    if c.conv_kernel_size:
      x = self._conv(emb, self._layer({k: v[0] for k, v in stack.items()}, x, visible, rel, idx),
                     valid_BxLx1)
      stack = {k: v[1:] for k, v in stack.items()}
    body = lambda h, p: (self._layer(p, h, visible, rel, idx), None)
    x, _ = jax.lax.scan(body, x, stack)
    hidden, cls = x, x[:, 0]
    chex.assert_shape(hidden, (*input_ids.shape, c.hidden_size))
    logits, pooled = None, cls
    if c.num_labels:
      pooled = ACTIVATIONS[c.pooler_hidden_act](add_bias(cls @ self.pooler[...],
                                                         self.pooler_bias[...]))
      logits = add_bias(pooled @ self.classifier[...], self.classifier_bias[...])
    return logits, {"hidden": hidden, "pooled": pooled, "mean": masked_mean(hidden, valid_BxL),
                    "pre_logits": pooled}


def tensor_table(c: Config) -> dict[str, HfTensor]:
  """Our parameter path -> HF tensor (names under "deberta." in the classification layout)."""
  T, lin, vec = HfTensor, Layout.LINEAR, Layout.VECTOR
  a, o = "encoder.layer.{i}.attention.", "encoder.layer.{i}."
  t = {"word_embeddings": T("embeddings.word_embeddings.weight", Layout.TABLE),
       "position_embeddings": T("embeddings.position_embeddings.weight", Layout.TABLE),
       "token_type_embeddings": T("embeddings.token_type_embeddings.weight", Layout.TABLE),
       "embed_proj": T("embeddings.embed_proj.weight", lin),
       "emb_norm": T("embeddings.LayerNorm.weight", vec),
       "emb_norm_bias": T("embeddings.LayerNorm.bias", vec),
       "rel_embeddings": T("encoder.rel_embeddings.weight", Layout.TABLE),
       "rel_norm": T("encoder.LayerNorm.weight", vec),
       "rel_norm_bias": T("encoder.LayerNorm.bias", vec),
       "conv": T("encoder.conv.conv.weight", Layout.CONV1D),
       "conv_bias": T("encoder.conv.conv.bias", vec),
       "conv_norm": T("encoder.conv.LayerNorm.weight", vec),
       "conv_norm_bias": T("encoder.conv.LayerNorm.bias", vec),
       "pooler": T("pooler.dense.weight", lin, in_base=False),
       "pooler_bias": T("pooler.dense.bias", vec, in_base=False),
       "classifier": T("classifier.weight", lin, in_base=False),
       "classifier_bias": T("classifier.bias", vec, in_base=False)}
  for ours, hf in (("q", "query_proj"), ("k", "key_proj"), ("v", "value_proj"),
                   ("k_pos", "pos_key_proj"), ("q_pos", "pos_query_proj")):
    t[f"layers.w{ours}"] = T(f"{a}self.{hf}.weight", lin)
    t[f"layers.b{ours}"] = T(f"{a}self.{hf}.bias", vec)
  for ours, hf in (("o", a + "output.dense"), ("attn_norm", a + "output.LayerNorm"),
                   ("i", o + "intermediate.dense"), ("o_mlp", o + "output.dense"),
                   ("out_norm", o + "output.LayerNorm")):
    weight = ours if ours.endswith("norm") else f"w{ours}"
    bias = f"{ours}_bias" if ours.endswith("norm") else f"b{ours}"
    t[f"layers.{weight}"] = T(f"{hf}.weight", Layout.LINEAR2 if ours == "o" else (
        vec if ours.endswith("norm") else lin))
    t[f"layers.{bias}"] = T(f"{hf}.bias", vec)
  return t


def load(path: str | os.PathLike, dtype: Any = jnp.float32, mesh: Mesh | None = None,
         rules: LogicalRules = CLASSIFIER_RULES) -> Model:
  """A Model from a HF folder (config.json + safetensors) of DebertaV2Model, DebertaV2ForMaskedLM or
  DebertaV2ForSequenceClassification; the head is loaded iff the folder has `classifier.weight`."""
  return load_family(path, Config, Model, tensor_table, "deberta.", "embeddings.word_embeddings.weight", dtype, mesh,
                     rules)


def export(model: Model, folder: str | os.PathLike) -> None:
  """Writes a HF folder that transformers loads as DebertaV2ForSequenceClassification (or
  DebertaV2Model without a head) giving the same outputs."""
  prefix = "deberta." if model.config.num_labels else ""
  export_folder(model, tensor_table(model.config), prefix, model.config.to_hf(), folder)
