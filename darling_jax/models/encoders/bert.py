"""BERT-family encoders (BertModel, BertForSequenceClassification) in Flax NNX.

Follows the encoder contract of `darling_jax.models.encoders`: absolute learned positions, token
type (segment) embeddings, post-LayerNorm blocks, exact (erf) GELU by default, the tanh pooler over [CLS]
and an optional classification head on the pooled vector. Per-layer weights are stacked on a leading
`layers` axis and the blocks run under `jax.lax.scan`, so compile time does not grow with depth.

Axis letters: B batch, L length, D width, N heads, H head dim, F mlp width, V vocab, Y layers,
C classes (num_labels).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import enum
import json
import os
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError
from darling_jax.models.encoders import read_hf_config
from darling_jax.models.safetensors_io import SafetensorsFolder, place, save_safetensors
from darling_jax.sharding.rules import CLASSIFIER_RULES, LogicalRules, state_shardings


class Activation(enum.Enum):
  GELU = "gelu"  # exact erf GELU, what HF's "gelu" means
  GELU_TANH = "gelu_new"  # tanh approximation ("gelu_new", "gelu_pytorch_tanh")
  RELU = "relu"


_HF_ACTIVATIONS = {
    "gelu": Activation.GELU, "gelu_new": Activation.GELU_TANH,
    "gelu_pytorch_tanh": Activation.GELU_TANH, "relu": Activation.RELU,
}


@dataclasses.dataclass(frozen=True)
class Config:
  """BERT hyper-parameters (field names follow the paper's notation, HF names in from_hf)."""

  vocab_size: int  # V
  hidden_size: int  # D
  num_layers: int  # Y
  num_heads: int  # N; head dim H = D / N
  intermediate_size: int  # F
  max_position_embeddings: int = 512  # longest input the absolute position table covers
  type_vocab_size: int = 2  # segment ids: 0 for the first text, 1 for the second
  layer_norm_eps: float = 1e-12
  activation: Activation = Activation.GELU
  has_pooler: bool = True  # tanh(W h_CLS + b); sentence-transformers checkpoints may lack it
  num_labels: int | None = None  # None: a bare BertModel; else a C-way classification head
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise InputError("bert config", f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_heads}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings"):
      if getattr(self, name) <= 0:
        raise InputError(f"bert config.{name}", f"must be positive, got {getattr(self, name)}")
    if not isinstance(self.activation, Activation):
      raise InputError("bert config.activation", f"unknown activation {self.activation!r}")
    if self.num_labels is not None and self.num_labels < 1:
      raise InputError("bert config.num_labels", f"must be >= 1 or None, got {self.num_labels}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "Config":
    """From a HF config.json dict (BertModel or BertForSequenceClassification)."""
    try:
      if hf.get("position_embedding_type", "absolute") != "absolute":
        raise InputError("config.json position_embedding_type",
                         f"only 'absolute' is supported, got {hf['position_embedding_type']!r}")
      act = hf.get("hidden_act", "gelu")
      if act not in _HF_ACTIVATIONS:
        raise InputError("config.json hidden_act", f"unsupported activation {act!r}")
      archs = hf.get("architectures") or []
      num_labels = None
      if any(a.endswith("ForSequenceClassification") for a in archs):
        num_labels = len(hf["id2label"]) if "id2label" in hf else int(hf.get("num_labels", 2))
      return cls(
          vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
          num_layers=int(hf["num_hidden_layers"]), num_heads=int(hf["num_attention_heads"]),
          intermediate_size=int(hf["intermediate_size"]),
          max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
          type_vocab_size=int(hf.get("type_vocab_size", 2)),
          layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
          activation=_HF_ACTIVATIONS[act], num_labels=num_labels,
          has_pooler=bool(hf.get("add_pooling_layer", True)),
          pad_token_id=int(hf.get("pad_token_id") or 0),
      )
    except KeyError as e:
      raise InputError("config.json", f"missing BERT field {e}") from None

  def to_hf(self) -> dict[str, Any]:
    """The HF config.json dict this config corresponds to."""
    act = {v: k for k, v in _HF_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}[self.activation]
    out = {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification" if self.num_labels else "BertModel"],
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "intermediate_size": self.intermediate_size, "hidden_act": act,
        "max_position_embeddings": self.max_position_embeddings,
        "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps,
        "pad_token_id": self.pad_token_id, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
    }
    if not self.has_pooler:
      out["add_pooling_layer"] = False  # our marker; transformers would build a random pooler
    if self.num_labels:
      out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
      out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
    return out

  @classmethod
  def tiny(cls, num_labels: int | None = None) -> "Config":
    """A 2-layer, 32-wide model for tests."""
    return cls(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
               max_position_embeddings=64, num_labels=num_labels)


def _param(rngs: nnx.Rngs | None, shape: tuple[int, ...], names: tuple[str | None, ...],
           dtype, init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  else:  # ones
    value = jnp.ones(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), sharding_names=names, eager_sharding=False)


def _layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  # Statistics in float32: bf16 variance of 384+ values loses the small deviations LN normalises.
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return (y * _lead(scale, x.ndim).astype(jnp.float32)
          + _lead(bias, x.ndim).astype(jnp.float32)).astype(x.dtype)


def _lead(v: Array, ndim: int) -> Array:
  """`v` with leading unit axes up to `ndim` (rank promotion is explicit in this package)."""
  return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _activate(x: Array, act: Activation) -> Array:
  match act:
    case Activation.GELU:
      return jax.nn.gelu(x, approximate=False)
    case Activation.GELU_TANH:
      return jax.nn.gelu(x, approximate=True)
    case Activation.RELU:
      return jax.nn.relu(x)


class Model(nnx.Module):
  """BERT encoder, optional pooler and optional C-way classification head."""

  def __init__(self, config: Config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    c = config
    self.config = c
    D, N, H, F, Y = c.hidden_size, c.num_heads, c.head_dim, c.intermediate_size, c.num_layers
    p = lambda shape, names, init="normal": _param(rngs, shape, names, dtype, init)
    self.word_embed_VxD = p((c.vocab_size, D), ("vocab", "embed"))
    self.pos_embed_LxD = p((c.max_position_embeddings, D), (None, "embed"))
    self.type_embed_TxD = p((max(c.type_vocab_size, 1), D), (None, "embed"))
    self.embed_ln_scale = p((D,), ("embed",), "ones")
    self.embed_ln_bias = p((D,), ("embed",), "zeros")
    # Stacked per-layer weights: a leading Y ("layers") axis scanned over.
    self.q_YxDxNxH = p((Y, D, N, H), ("layers", "embed", "heads", "head_dim"))
    self.k_YxDxNxH = p((Y, D, N, H), ("layers", "embed", "heads", "head_dim"))
    self.v_YxDxNxH = p((Y, D, N, H), ("layers", "embed", "heads", "head_dim"))
    self.q_bias_YxNxH = p((Y, N, H), ("layers", "heads", "head_dim"), "zeros")
    self.k_bias_YxNxH = p((Y, N, H), ("layers", "heads", "head_dim"), "zeros")
    self.v_bias_YxNxH = p((Y, N, H), ("layers", "heads", "head_dim"), "zeros")
    self.o_YxNxHxD = p((Y, N, H, D), ("layers", "heads", "head_dim", "embed"))
    self.o_bias_YxD = p((Y, D), ("layers", "embed"), "zeros")
    self.attn_ln_scale_YxD = p((Y, D), ("layers", "embed"), "ones")
    self.attn_ln_bias_YxD = p((Y, D), ("layers", "embed"), "zeros")
    self.mlp_in_YxDxF = p((Y, D, F), ("layers", "embed", "mlp"))
    self.mlp_in_bias_YxF = p((Y, F), ("layers", "mlp"), "zeros")
    self.mlp_out_YxFxD = p((Y, F, D), ("layers", "mlp", "embed"))
    self.mlp_out_bias_YxD = p((Y, D), ("layers", "embed"), "zeros")
    self.mlp_ln_scale_YxD = p((Y, D), ("layers", "embed"), "ones")
    self.mlp_ln_bias_YxD = p((Y, D), ("layers", "embed"), "zeros")
    if c.has_pooler:
      self.pooler_DxD = p((D, D), ("embed", None))
      self.pooler_bias_D = p((D,), (None,), "zeros")
    if c.num_labels:
      self.classifier_DxC = p((D, c.num_labels), ("embed", None))
      self.classifier_bias_C = p((c.num_labels,), (None,), "zeros")

  def _layer_params(self) -> dict[str, Array]:
    return {k: getattr(self, k)[...] for k in _LAYER_KEYS}

  @jax.named_scope("bert")
  def __call__(
      self,
      input_ids: Int[Array, "B L"],
      attention_mask: Int[Array, "B L"],
      token_type_ids: Int[Array, "B L"] | None = None,
  ) -> tuple[Float[Array, "B C"] | None, dict[str, Float[Array, "..."]]]:
    """Encodes a padded batch.

    Returns:
      (logits [B, C] or None without a head, {"hidden" [B,L,D], "pooled" [B,D] (tanh pooler of
      [CLS], or [CLS] itself without a pooler), "mean" [B,D] (attention-masked mean of hidden),
      "pre_logits" [B,D] (what the head reads: "pooled")}).
    """
    c = self.config
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise InputError("bert inputs", f"input_ids {input_ids.shape} and attention_mask "
                       f"{attention_mask.shape} must both be [B, L]")
    B, L = input_ids.shape
    if L > c.max_position_embeddings:
      raise InputError("bert inputs", f"length {L} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    elif token_type_ids.shape != input_ids.shape:
      raise InputError("bert inputs", f"token_type_ids {token_type_ids.shape} != input_ids "
                       f"{input_ids.shape}")
    x_BxLxD = (self.word_embed_VxD[...][input_ids]
               + self.pos_embed_LxD[...][None, :L]
               + self.type_embed_TxD[...][token_type_ids])
    x_BxLxD = _layer_norm(x_BxLxD, self.embed_ln_scale[...], self.embed_ln_bias[...],
                          c.layer_norm_eps)
    # Additive key mask in float32 (softmax runs in float32): padded keys get -1e30 -> weight 0.
    mask_Bx1x1xL = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e30).astype(jnp.float32)
    scale = 1.0 / np.sqrt(c.head_dim)

    def block(x: Array, w: dict[str, Array]) -> tuple[Array, None]:
      q_BxLxNxH = jnp.einsum("BLD,DNH->BLNH", x, w["q_YxDxNxH"]) + _lead(w["q_bias_YxNxH"], 4)
      k_BxLxNxH = jnp.einsum("BLD,DNH->BLNH", x, w["k_YxDxNxH"]) + _lead(w["k_bias_YxNxH"], 4)
      v_BxLxNxH = jnp.einsum("BLD,DNH->BLNH", x, w["v_YxDxNxH"]) + _lead(w["v_bias_YxNxH"], 4)
      s_BxNxLxS = jnp.einsum("BLNH,BSNH->BNLS", q_BxLxNxH, k_BxLxNxH).astype(jnp.float32) * scale
      # float32 softmax: bf16 exponentials of large logits lose the small attention weights.
      a_BxNxLxS = jax.nn.softmax(s_BxNxLxS + mask_Bx1x1xL, axis=-1).astype(x.dtype)
      o_BxLxNxH = jnp.einsum("BNLS,BSNH->BLNH", a_BxNxLxS, v_BxLxNxH)
      o_BxLxD = jnp.einsum("BLNH,NHD->BLD", o_BxLxNxH, w["o_YxNxHxD"]) + _lead(w["o_bias_YxD"], 3)
      x = _layer_norm(x + o_BxLxD, w["attn_ln_scale_YxD"], w["attn_ln_bias_YxD"], c.layer_norm_eps)
      h_BxLxF = jnp.einsum("BLD,DF->BLF", x, w["mlp_in_YxDxF"]) + _lead(w["mlp_in_bias_YxF"], 3)
      h_BxLxF = _activate(h_BxLxF, c.activation)
      m_BxLxD = (jnp.einsum("BLF,FD->BLD", h_BxLxF, w["mlp_out_YxFxD"])
                 + _lead(w["mlp_out_bias_YxD"], 3))
      x = _layer_norm(x + m_BxLxD, w["mlp_ln_scale_YxD"], w["mlp_ln_bias_YxD"], c.layer_norm_eps)
      return x, None

    hidden_BxLxD, _ = jax.lax.scan(block, x_BxLxD, self._layer_params())
    cls_BxD = hidden_BxLxD[:, 0]
    if c.has_pooler:
      pooled_BxD = jnp.tanh(cls_BxD @ self.pooler_DxD[...] + self.pooler_bias_D[...][None])
    else:
      pooled_BxD = cls_BxD
    m_BxL = attention_mask.astype(jnp.float32)
    mean_BxD = (jnp.einsum("BLD,BL->BD", hidden_BxLxD.astype(jnp.float32), m_BxL)
                / jnp.maximum(m_BxL.sum(-1, keepdims=True), 1e-9)).astype(hidden_BxLxD.dtype)
    logits = None
    if c.num_labels:
      logits = pooled_BxD @ self.classifier_DxC[...] + self.classifier_bias_C[...][None]
    return logits, {"hidden": hidden_BxLxD, "pooled": pooled_BxD, "mean": mean_BxD,
                    "pre_logits": pooled_BxD}


_LAYER_KEYS = (
    "q_YxDxNxH", "k_YxDxNxH", "v_YxDxNxH", "q_bias_YxNxH", "k_bias_YxNxH", "v_bias_YxNxH",
    "o_YxNxHxD", "o_bias_YxD", "attn_ln_scale_YxD", "attn_ln_bias_YxD", "mlp_in_YxDxF",
    "mlp_in_bias_YxF", "mlp_out_YxFxD", "mlp_out_bias_YxD", "mlp_ln_scale_YxD", "mlp_ln_bias_YxD",
)


# ---------------------------------------------------------------------------------------------
# HF <-> NNX weight mapping. Torch Linear stores [out, in]; our kernels are [in, ...out].


def _hf_mapping(c: Config) -> dict[str, tuple[str, Callable, Callable]]:
  """attr -> (HF name ({i}: stacked layer), to_ours(np) per tensor, to_hf(np) per tensor)."""
  D, N, H = c.hidden_size, c.num_heads, c.head_dim
  same = lambda a: a
  lin_in = (lambda a: a.T.reshape(D, N, H), lambda a: a.reshape(D, N * H).T)  # q/k/v [N*H, D]
  bias_nh = (lambda a: a.reshape(N, H), lambda a: a.reshape(N * H))
  lin_o = (lambda a: a.T.reshape(N, H, D), lambda a: a.reshape(N * H, D).T)
  tr = (lambda a: a.T, lambda a: a.T)
  L = "encoder.layer.{i}."
  m: dict[str, tuple[str, Callable, Callable]] = {
      "word_embed_VxD": ("embeddings.word_embeddings.weight", same, same),
      "pos_embed_LxD": ("embeddings.position_embeddings.weight", same, same),
      "type_embed_TxD": ("embeddings.token_type_embeddings.weight", same, same),
      "embed_ln_scale": ("embeddings.LayerNorm.weight", same, same),
      "embed_ln_bias": ("embeddings.LayerNorm.bias", same, same),
      "q_YxDxNxH": (L + "attention.self.query.weight", *lin_in),
      "k_YxDxNxH": (L + "attention.self.key.weight", *lin_in),
      "v_YxDxNxH": (L + "attention.self.value.weight", *lin_in),
      "q_bias_YxNxH": (L + "attention.self.query.bias", *bias_nh),
      "k_bias_YxNxH": (L + "attention.self.key.bias", *bias_nh),
      "v_bias_YxNxH": (L + "attention.self.value.bias", *bias_nh),
      "o_YxNxHxD": (L + "attention.output.dense.weight", *lin_o),
      "o_bias_YxD": (L + "attention.output.dense.bias", same, same),
      "attn_ln_scale_YxD": (L + "attention.output.LayerNorm.weight", same, same),
      "attn_ln_bias_YxD": (L + "attention.output.LayerNorm.bias", same, same),
      "mlp_in_YxDxF": (L + "intermediate.dense.weight", *tr),
      "mlp_in_bias_YxF": (L + "intermediate.dense.bias", same, same),
      "mlp_out_YxFxD": (L + "output.dense.weight", *tr),
      "mlp_out_bias_YxD": (L + "output.dense.bias", same, same),
      "mlp_ln_scale_YxD": (L + "output.LayerNorm.weight", same, same),
      "mlp_ln_bias_YxD": (L + "output.LayerNorm.bias", same, same),
  }
  if c.has_pooler:
    m["pooler_DxD"] = ("pooler.dense.weight", *tr)
    m["pooler_bias_D"] = ("pooler.dense.bias", same, same)
  return m


_HEAD = {"classifier_DxC": ("classifier.weight", lambda a: a.T, lambda a: a.T),
         "classifier_bias_C": ("classifier.bias", lambda a: a, lambda a: a)}
# Checkpoints converted from TF name LayerNorm params gamma/beta.
_LEGACY = {".LayerNorm.weight": ".LayerNorm.gamma", ".LayerNorm.bias": ".LayerNorm.beta"}


def load(path: str | os.PathLike, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None,
         rules: LogicalRules = CLASSIFIER_RULES, config: Config | None = None) -> Model:
  """Loads a HF BERT folder (config.json + safetensors) into a Model, each weight placed sharded.

  Accepts BertModel checkpoints (names without prefix, or under `bert.`) and
  BertForSequenceClassification (`bert.` + `classifier.`). A missing pooler is allowed (the model
  then pools with [CLS]); a missing head on a sequence-classification config is an error.
  """
  folder = pathlib.Path(path)
  hf = read_hf_config(folder)
  if config is None:
    config = Config.from_hf(hf)
  st = SafetensorsFolder(folder)
  names = set(st)  # SafetensorsFolder's lookups raise InputError, so test membership on the keys
  prefix = next((p for p in ("", "bert.") if p + "embeddings.word_embeddings.weight" in names),
                None)
  if prefix is None:
    raise InputError(folder, "no BERT embeddings tensor (embeddings.word_embeddings.weight) found")
  if prefix + "pooler.dense.weight" not in names and config.has_pooler:
    config = dataclasses.replace(config, has_pooler=False)
  if config.num_labels and "classifier.weight" not in names:
    raise InputError(folder, "config is a sequence classifier but classifier.weight is missing")
  if mesh is None:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                             ("data", "fsdp", "tensor"))
  abstract = nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0), dtype=dtype))
  graphdef, state = nnx.split(abstract)
  shardings = state_shardings(state, mesh, rules)
  mapping = {k: (prefix + n, f) for k, (n, f, _) in _hf_mapping(config).items()}
  mapping.update({k: (n, f) for k, (n, f, _) in _HEAD.items()})

  def tensor(name: str) -> np.ndarray:
    if name not in names:
      for new, old in _LEGACY.items():
        if name.endswith(new) and name[: -len(new)] + old in names:
          return st[name[: -len(new)] + old]
    return st[name]

  def produce_for(attr: str) -> Callable[[], np.ndarray]:
    name, to_ours = mapping[attr]
    if "{i}" in name:
      return lambda: np.stack([to_ours(np.asarray(tensor(name.format(i=i)), np.float32))
                               for i in range(config.num_layers)])
    return lambda: to_ours(np.asarray(tensor(name), np.float32))

  def one(path_key: tuple, var: nnx.Variable, sharding: nnx.Variable) -> nnx.Variable:
    attr = str(path_key[-1])
    value = place(produce_for(attr), var.get_value().shape, dtype, sharding.get_value(),
                  f"{folder}:{mapping[attr][0]}")
    return var.replace(value)

  flat = dict(nnx.to_flat_state(state))
  flat_sh = dict(nnx.to_flat_state(shardings))
  loaded = nnx.from_flat_state({k: one(k, v, flat_sh[k]) for k, v in flat.items()})
  return nnx.merge(graphdef, loaded)


def export(model: Model, folder: str | os.PathLike) -> None:
  """Writes config.json + model.safetensors that transformers loads (BertModel / ...ForSeq...)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  c = model.config
  prefix = "bert." if c.num_labels else ""
  mapping = {k: (prefix + n, t) for k, (n, _, t) in _hf_mapping(c).items()}
  if c.num_labels:
    mapping.update({k: (n, t) for k, (n, _, t) in _HEAD.items()})
  tensors: dict[str, np.ndarray] = {}
  for attr, (name, to_hf) in mapping.items():
    value = np.asarray(jax.device_get(getattr(model, attr)[...]), np.float32)
    if "{i}" in name:
      for i in range(c.num_layers):
        tensors[name.format(i=i)] = np.ascontiguousarray(to_hf(value[i]))
    else:
      tensors[name] = np.ascontiguousarray(to_hf(value))
  save_safetensors(tensors, folder)
  # Without a pooler, transformers builds a randomly initialised one on reload: hidden states and
  # mean pooling still match, "pooled" does not.
  (folder / "config.json").write_text(json.dumps(c.to_hf(), indent=2))
