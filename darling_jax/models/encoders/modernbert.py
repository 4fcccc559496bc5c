"""ModernBERT encoder in Flax NNX, loading and exporting Hugging Face checkpoints.

The maths (transformers' modeling_modernbert, matched to 1e-4 in float32 by the tests):
  x = LN_e(E[ids]);  per layer l:  x += W_o Attn_l(LN_a(x))  (LN_a is the identity for l = 0),
                                   x += W_2 (act(u W_in) * (u W_gate)),  u = LN_m(x);
  h = LN_f(x).
Attention is bidirectional with RoPE. A "full_attention" layer sees every valid key with RoPE base
theta_global; a "sliding_attention" layer only keys with |i - j| <= local_attention // 2, base
theta_local. Classification: pooled = h[:, 0] ("cls") or the masked mean ("mean"),
pre_logits = LN_h(act(pooled W_d)), logits = pre_logits W_c + b_c.

Padding is handled by masking keys, not by unpadding: valid positions get HF's numbers. The layers
are stacked and scanned (one compiled layer body): layer 0, which has no attention pre-norm, runs
before the scan, and the global/local choice of the others is a per-layer flag scanned alongside
their weights (the local mask and RoPE table are picked per layer with a select).

Axes: B batch, L query length, S key length, D width, N heads, H head dim, F MLP width, V vocab,
C labels, R layers.
"""

from __future__ import annotations

import dataclasses
import enum
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

MODEL_TYPE = "modernbert"
FULL, SLIDING = "full_attention", "sliding_attention"
# HF fields with no effect on inference: kept for export / dropped.
_PASSTHROUGH = ("decoder_bias", "initializer_cutoff_factor", "attention_dropout",
                "embedding_dropout", "mlp_dropout", "classifier_dropout", "sparse_prediction",
                "sparse_pred_ignore_index", "deterministic_flash_attn")
_IGNORED = ("reference_compile", "repad_logits_with_grad", "position_embedding_type",
            "layer_norm_eps")


class Pooling(enum.Enum):
  CLS = "cls"
  MEAN = "mean"


@dataclasses.dataclass(frozen=True)
class Config:
  """A ModernBERT checkpoint's shape and options (HF field names)."""

  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  hidden_activation: str = "gelu"
  norm_eps: float = 1e-5
  norm_bias: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  layer_types: tuple[str, ...] = ()  # per layer FULL | SLIDING; () derives it from the next field
  global_attn_every_n_layers: int = 3  # legacy form: layer i is global iff i % n == 0
  global_rope_theta: float = 160_000.0
  local_rope_theta: float = 10_000.0
  local_attention: int = 128
  max_position_embeddings: int = 8192
  classifier_pooling: Pooling = Pooling.CLS
  classifier_bias: bool = False
  classifier_activation: str = "gelu"
  pad_token_id: int = 50283
  num_labels: int | None = None  # None: bare encoder; else a C-way classification head
  passthrough: str = "{}"  # JSON of the accepted-but-unused HF fields, written back on export

  def __post_init__(self):
    check_fields(self)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "local_attention"):
      if getattr(self, field) < 1:
        raise InputError(field, f"must be at least 1, got {getattr(self, field)}")
    try:
      object.__setattr__(self, "classifier_pooling", Pooling(self.classifier_pooling))
    except ValueError:
      raise InputError("classifier_pooling", f"{self.classifier_pooling!r} is not 'cls' or 'mean'")
    if not self.layer_types:
      if self.global_attn_every_n_layers < 1:
        raise InputError("global_attn_every_n_layers", "must be at least 1")
      object.__setattr__(self, "layer_types", tuple(
          SLIDING if i % self.global_attn_every_n_layers else FULL
          for i in range(self.num_hidden_layers)))
    types = self.layer_types
    if (not isinstance(types, (tuple, list)) or len(types) != self.num_hidden_layers
        or any(t not in (FULL, SLIDING) for t in types)):
      raise InputError("layer_types", f"{self.layer_types} is not {self.num_hidden_layers} of "
                       f"{FULL!r} / {SLIDING!r}")
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
      raise InputError("num_attention_heads", f"{self.num_attention_heads} heads must split "
                       f"hidden_size {self.hidden_size} into even head dims (RoPE)")
    for field in ("hidden_activation", "classifier_activation"):
      if getattr(self, field) not in ACTIVATIONS:
        raise InputError(field, f"unsupported activation {getattr(self, field)!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def tiny(cls, num_labels: int | None = 2) -> Config:
    return cls(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, local_attention=4, pad_token_id=0,
               num_labels=num_labels)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> Config:
    """Validates a HF config.json dict, in the old (`global_attn_every_n_layers`, `*_rope_theta`)
    or the transformers-5 (`layer_types`, `rope_parameters`) form; unsupported options raise
    InputError naming the field."""
    d = dict(hf)
    if d.get("model_type") != MODEL_TYPE:
      raise InputError(f"{source}: model_type", f"is {d.get('model_type')!r}, not {MODEL_TYPE!r}")
    names = {f.name for f in dataclasses.fields(cls)} - {"num_labels", "passthrough"}
    kw = {k: d.pop(k) for k in list(d) if k in names}
    if kw.get("layer_types") is None:  # transformers 5 writes layer_types; older configs do not
      kw.pop("layer_types", None)
    if "pad_token_id" in kw and kw["pad_token_id"] is None:
      kw["pad_token_id"] = 0  # the contract's pad id is an int; HF's null means "no padding row"
    if d.pop("rope_scaling", None) is not None:
      raise InputError(f"{source}: rope_scaling", "RoPE scaling is not supported")
    rope = d.pop("rope_parameters", None) or {}
    for kind, field in ((FULL, "global_rope_theta"), (SLIDING, "local_rope_theta")):
      params = dict(rope.get(kind) or {}) if isinstance(rope, dict) else {"rope_type": rope}
      if params.pop("rope_type", "default") != "default" or params.keys() - {"rope_theta"}:
        raise InputError(f"{source}: rope_parameters.{kind}", f"{rope}: only default RoPE")
      if "rope_theta" in params:  # overrides the legacy global_/local_rope_theta
        kw[field] = params["rope_theta"]
    if kw.get("local_rope_theta", 0) is None:  # old configs: local layers use the global base
      kw["local_rope_theta"] = kw.get("global_rope_theta", cls.global_rope_theta)
    head_dim = d.pop("head_dim", None)
    kw["num_labels"] = hf_num_labels(hf)
    kw["passthrough"] = split_known(d, _PASSTHROUGH, _IGNORED, "ModernBERT", source)
    try:
      cfg = cls(**kw)
    except InputError as e:
      raise InputError(f"{source}: {e.where}", e.problem) from None
    if head_dim is not None and head_dim != cfg.head_dim:
      raise InputError(f"{source}: head_dim", f"{head_dim} != hidden_size / num_attention_heads")
    return cfg

  def to_hf(self) -> dict[str, Any]:
    """The HF config.json dict (transformers-5 fields, plus the legacy ones older versions read)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for k in ("passthrough", "num_labels", "global_attn_every_n_layers"):
      d.pop(k)
    every = [n for n in range(1, self.num_hidden_layers + 1) if self.layer_types == tuple(
        SLIDING if i % n else FULL for i in range(self.num_hidden_layers))]
    if every:
      d["global_attn_every_n_layers"] = every[0]
    rope = lambda theta: {"rope_type": "default", "rope_theta": theta}
    d.update(json.loads(self.passthrough), model_type=MODEL_TYPE,
             layer_types=list(self.layer_types), classifier_pooling=self.classifier_pooling.value,
             rope_parameters={FULL: rope(self.global_rope_theta),
                              SLIDING: rope(self.local_rope_theta)})
    return with_head_fields(d, "ModernBert", self.num_labels)


def _rope(theta: float, L: int, H: int) -> tuple[Array, Array]:
  inv_freq = 1.0 / (theta ** (np.arange(0, H, 2, dtype=np.float32) / H))
  freqs = np.arange(L, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
  emb = np.concatenate([freqs, freqs], axis=-1)
  return jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))


def _rotate(x_BxLxNxH: Array, cos_LxH: Array, sin_LxH: Array) -> Array:
  half = x_BxLxNxH.shape[-1] // 2
  rot = jnp.concatenate([-x_BxLxNxH[..., half:], x_BxLxNxH[..., :half]], axis=-1)
  c, s = cos_LxH[None, :, None, :], sin_LxH[None, :, None, :]
  return (x_BxLxNxH.astype(jnp.float32) * c + rot.astype(jnp.float32) * s).astype(x_BxLxNxH.dtype)


class Model(nnx.Module):
  """ModernBERT(+ sequence classification head when config.num_labels is set)."""

  def __init__(self, config: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
    self.config = c = config
    D, F, N, H, V, R = (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.head_dim,
                        c.vocab_size, c.num_hidden_layers)
    p = ParamMaker(dtype)
    self.tok_embeddings = p((V, D), ("vocab", "embed"))
    self.emb_norm = p((D,), ("embed",), "ones")
    self.final_norm = p((D,), ("embed",), "ones")
    stacked = dict(
        wqkv=p((R, D, 3, N, H), ("layers", "embed", None, "heads", "head_dim")),
        wo=p((R, N, H, D), ("layers", "heads", "head_dim", "embed")),
        attn_norm=p((R - 1, D), ("layers", "embed"), "ones"),  # layer 0 has none
        mlp_norm=p((R, D), ("layers", "embed"), "ones"),
        wi=p((R, D, 2, F), ("layers", "embed", None, "mlp")),
        wo_mlp=p((R, F, D), ("layers", "mlp", "embed")))
    if c.attention_bias:
      stacked.update(bqkv=p((R, 3, N, H), ("layers", None, "heads", "head_dim"), "zeros"),
               bo=p((R, D), ("layers", "embed"), "zeros"))
    if c.mlp_bias:
      stacked.update(bi=p((R, 2, F), ("layers", None, "mlp"), "zeros"),
               bo_mlp=p((R, D), ("layers", "embed"), "zeros"))
    if c.norm_bias:
      stacked.update(attn_norm_bias=p((R - 1, D), ("layers", "embed"), "zeros"),
               mlp_norm_bias=p((R, D), ("layers", "embed"), "zeros"))
      self.emb_norm_bias = p((D,), ("embed",), "zeros")
      self.final_norm_bias = p((D,), ("embed",), "zeros")
    self.layers = nnx.Dict(stacked)
    if c.num_labels:
      self.head_dense = p((D, D), ("embed", None))
      self.head_norm = p((D,), ("embed",), "ones")
      self.classifier = p((D, c.num_labels), ("embed", None))
      self.classifier_bias = p((c.num_labels,), (None,), "zeros")
      if c.classifier_bias:
        self.head_dense_bias = p((D,), ("embed",), "zeros")
      if c.norm_bias:
        self.head_norm_bias = p((D,), ("embed",), "zeros")
    p.draw(rngs)

  def _opt(self, name: str) -> Array | None:
    return getattr(self, name)[...] if hasattr(self, name) else None

  def _layer(self, p: dict[str, Array], x_BxLxD: Array, visible_Bx1xLxS: Array, cos_LxH: Array,
             sin_LxH: Array) -> Array:
    c = self.config
    h = x_BxLxD
    if "attn_norm" in p:
      h = layer_norm(h, p["attn_norm"], p.get("attn_norm_bias"), c.norm_eps)
    qkv = add_bias(jnp.einsum("bld,dtnh->bltnh", h, p["wqkv"]), p.get("bqkv"))
    q, k, v = (_rotate(qkv[:, :, 0], cos_LxH, sin_LxH), _rotate(qkv[:, :, 1], cos_LxH, sin_LxH),
               qkv[:, :, 2])
    scores = jnp.einsum("blnh,bsnh->bnls", q, k).astype(jnp.float32) * c.head_dim ** -0.5
    # A fully masked row (padding query far from every valid key) becomes uniform, never NaN.
    scores = jnp.where(visible_Bx1xLxS, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    attn = jnp.einsum("bnls,bsnh->blnh", probs, v)
    x_BxLxD = x_BxLxD + add_bias(jnp.einsum("blnh,nhd->bld", attn, p["wo"]), p.get("bo"))
    u = layer_norm(x_BxLxD, p["mlp_norm"], p.get("mlp_norm_bias"), c.norm_eps)
    gi = add_bias(jnp.einsum("bld,dtf->bltf", u, p["wi"]), p.get("bi"))
    y = ACTIVATIONS[c.hidden_activation](gi[:, :, 0]) * gi[:, :, 1]
    return x_BxLxD + add_bias(jnp.einsum("blf,fd->bld", y, p["wo_mlp"]), p.get("bo_mlp"))

  def __call__(
      self, input_ids: Int[Array, "B L"], attention_mask: Int[Array, "B L"],
      token_type_ids: Int[Array, "B L"] | None = None,
  ) -> tuple[Float[Array, "B C"] | None, dict[str, Array]]:
    """(logits or None, {"hidden", "pooled", "mean", "pre_logits"}); token_type_ids are unused."""
    del token_type_ids  # ModernBERT has no segment embeddings
    c = self.config
    chex.assert_rank([input_ids, attention_mask], 2)
    chex.assert_equal_shape([input_ids, attention_mask])
    L = input_ids.shape[1]
    valid_BxL = attention_mask.astype(bool)
    x = layer_norm(self.tok_embeddings[...][input_ids], self.emb_norm[...],
                   self._opt("emb_norm_bias"), c.norm_eps)
    pos = np.arange(L)
    in_window_LxS = np.abs(pos[:, None] - pos[None, :]) <= c.local_attention // 2
    masks = {FULL: valid_BxL[:, None, None, :],  # [B, 1, 1, S]
             SLIDING: valid_BxL[:, None, None, :] & jnp.asarray(in_window_LxS)[None, None]}
    ropes = {FULL: _rope(c.global_rope_theta, L, c.head_dim),
             SLIDING: _rope(c.local_rope_theta, L, c.head_dim)}
    stack = {k: v[...] for k, v in self.layers.items()}
    first = {k: v[0] for k, v in stack.items() if not k.startswith("attn_norm")}
    kind0 = c.layer_types[0]
    x = self._layer(first, x, masks[kind0], *ropes[kind0])
    rest = {k: v if k.startswith("attn_norm") else v[1:] for k, v in stack.items()}
    is_full_R = jnp.asarray([t == FULL for t in c.layer_types[1:]], dtype=bool)

    def body(x_BxLxD, xs):
      p, full = xs
      pick = lambda a, b: jnp.where(full, a, b)
      return self._layer(p, x_BxLxD, pick(masks[FULL], masks[SLIDING]),
                         pick(ropes[FULL][0], ropes[SLIDING][0]),
                         pick(ropes[FULL][1], ropes[SLIDING][1])), None

    if c.num_hidden_layers > 1:
      x, _ = jax.lax.scan(body, x, (rest, is_full_R))
    hidden = layer_norm(x, self.final_norm[...], self._opt("final_norm_bias"), c.norm_eps)
    chex.assert_shape(hidden, (*input_ids.shape, c.hidden_size))
    mean = masked_mean(hidden, valid_BxL)
    match c.classifier_pooling:
      case Pooling.CLS:
        pooled = hidden[:, 0]
      case Pooling.MEAN:
        pooled = mean
    logits, pre = None, pooled
    if c.num_labels:
      pre = ACTIVATIONS[c.classifier_activation](
          add_bias(pooled @ self.head_dense[...], self._opt("head_dense_bias")))
      pre = layer_norm(pre, self.head_norm[...], self._opt("head_norm_bias"), c.norm_eps)
      logits = add_bias(pre @ self.classifier[...], self.classifier_bias[...])
    return logits, {"hidden": hidden, "pooled": pooled, "mean": mean, "pre_logits": pre}


def tensor_table(c: Config) -> dict[str, HfTensor]:
  """Our parameter path -> HF tensor (names under "model." in the classification layout)."""
  T, lin, vec = HfTensor, Layout.LINEAR, Layout.VECTOR
  return {"tok_embeddings": T("embeddings.tok_embeddings.weight", Layout.TABLE),
       "emb_norm": T("embeddings.norm.weight", vec),
       "emb_norm_bias": T("embeddings.norm.bias", vec),
       "final_norm": T("final_norm.weight", vec), "final_norm_bias": T("final_norm.bias", vec),
       "layers.wqkv": T("layers.{i}.attn.Wqkv.weight", lin),
       "layers.bqkv": T("layers.{i}.attn.Wqkv.bias", vec),
       "layers.wo": T("layers.{i}.attn.Wo.weight", Layout.LINEAR2),
       "layers.bo": T("layers.{i}.attn.Wo.bias", vec),
       "layers.attn_norm": T("layers.{i}.attn_norm.weight", vec, first_layer=1),
       "layers.attn_norm_bias": T("layers.{i}.attn_norm.bias", vec, first_layer=1),
       "layers.mlp_norm": T("layers.{i}.mlp_norm.weight", vec),
       "layers.mlp_norm_bias": T("layers.{i}.mlp_norm.bias", vec),
       "layers.wi": T("layers.{i}.mlp.Wi.weight", lin),
       "layers.bi": T("layers.{i}.mlp.Wi.bias", vec),
       "layers.wo_mlp": T("layers.{i}.mlp.Wo.weight", lin),
       "layers.bo_mlp": T("layers.{i}.mlp.Wo.bias", vec),
       "head_dense": T("head.dense.weight", lin, in_base=False),
       "head_dense_bias": T("head.dense.bias", vec, in_base=False),
       "head_norm": T("head.norm.weight", vec, in_base=False),
       "head_norm_bias": T("head.norm.bias", vec, in_base=False),
       "classifier": T("classifier.weight", lin, in_base=False),
       "classifier_bias": T("classifier.bias", vec, in_base=False)}


def load(path: str | os.PathLike, dtype: Any = jnp.float32, mesh: Mesh | None = None,
         rules: LogicalRules = CLASSIFIER_RULES) -> Model:
  """A Model from a HF folder (config.json + safetensors) of ModernBertModel, ModernBertForMaskedLM
  or ModernBertForSequenceClassification; the head is loaded iff the folder has
  `classifier.weight`. Each tensor goes straight into its sharding on `mesh` under `rules`."""
  return load_family(path, Config, Model, tensor_table, "model.", "embeddings.tok_embeddings.weight", dtype, mesh,
                     rules)


def export(model: Model, folder: str | os.PathLike) -> None:
  """Writes a HF folder that transformers loads as ModernBertForSequenceClassification (or
  ModernBertModel without a head) giving the same outputs."""
  prefix = "model." if model.config.num_labels else ""
  export_folder(model, tensor_table(model.config), prefix, model.config.to_hf(), folder)
