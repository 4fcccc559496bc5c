"""Plumbing shared by the HF encoder families (ModernBERT, DeBERTa-v2): config checks, parameters
with logical axis names, LayerNorm/activations, and the HF tensor table driving load and export.

A family describes its checkpoint as a table {our param path: HfTensor}: the HF tensor name (with
"{i}" for per-layer tensors, stacked along our leading "layers" axis) and its layout, so one reader
places every tensor straight into its sharding and one writer produces the HF names back.

Axes: B batch, L length, D width, R layers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import os
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array

from darling_jax.errors import InputError
from darling_jax.models.hf_folder import read_config_json, write_hf_folder
from darling_jax.models.safetensors_io import SafetensorsFolder, place
from darling_jax.sharding import LogicalRules, single_device_mesh, state_shardings

# transformers' ACT2FN names -> jax; "gelu" is the exact erf form, *_tanh/new/fast the tanh one.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu,
    "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "linear": lambda x: x,
}

# HF fields common to every family that do not change inference: dropped on load.
GENERIC_IGNORED = (
    "model_type", "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
    "num_labels", "output_attentions", "output_hidden_states", "return_dict", "use_cache",
    "chunk_size_feed_forward", "is_decoder", "is_encoder_decoder", "add_cross_attention",
    "tokenizer_class", "gradient_checkpointing", "initializer_range",
)
# ... and those kept verbatim (in Config.passthrough) so an export round-trips them.
GENERIC_PASSTHROUGH = ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "id2label",
                       "label2id", "problem_type", "tie_word_embeddings")


class Layout(enum.Enum):
  """How an HF tensor maps onto one of our (per-layer) parameters."""

  LINEAR = "linear"  # torch Linear weight [out, in] -> ours [in, *out dims]
  LINEAR2 = "linear2"  # torch Linear whose input spans our first two dims, e.g. [N, H, D]
  VECTOR = "vector"  # 1-D bias / norm scale, reshaped to our dims
  TABLE = "table"  # embedding table, as is
  CONV1D = "conv1d"  # torch Conv1d [out, in/groups, K] -> ours [K, in/groups, out]


class HfTensor(NamedTuple):
  key: str  # HF name after the base-model prefix; "{i}" marks a per-layer tensor
  layout: Layout
  first_layer: int = 0  # HF index of our row 0 for per-layer tensors
  in_base: bool = True  # False for head tensors, which never carry the base-model prefix


def hf_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
  n_in = {Layout.LINEAR: 1, Layout.LINEAR2: 2}.get(layout)
  match layout:
    case Layout.LINEAR | Layout.LINEAR2:
      return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
    case Layout.VECTOR:
      return (math.prod(shape),)
    case Layout.CONV1D:
      return tuple(reversed(shape))
    case Layout.TABLE:
      return tuple(shape)


def to_ours(w: np.ndarray, layout: Layout, shape: tuple[int, ...]) -> np.ndarray:
  match layout:
    case Layout.LINEAR | Layout.LINEAR2:
      return w.T.reshape(shape)
    case Layout.CONV1D:
      return w.transpose(2, 1, 0)
    case Layout.VECTOR | Layout.TABLE:
      return w.reshape(shape)


def to_hf(a: np.ndarray, layout: Layout) -> np.ndarray:
  match layout:
    case Layout.LINEAR | Layout.LINEAR2:
      n_in = 1 if layout == Layout.LINEAR else 2
      return a.reshape(math.prod(a.shape[:n_in]), -1).T
    case Layout.CONV1D:
      return a.transpose(2, 1, 0)
    case Layout.VECTOR:
      return a.reshape(-1)
    case Layout.TABLE:
      return a


def check_fields(cfg: Any, may_be_negative: tuple[str, ...] = ()) -> None:
  """Type/range check of a config dataclass's int/float/bool/str fields (JSON can hold anything)."""
  for f in dataclasses.fields(cfg):
    v, t = getattr(cfg, f.name), f.type
    is_int = isinstance(v, int) and not isinstance(v, bool)
    ok = {"int": is_int, "int | None": v is None or is_int, "bool": isinstance(v, bool),
          "float": isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": isinstance(v, str)}.get(t, True)
    if not ok:
      raise InputError(f.name, f"{v!r} is not a {t}")
    if t in ("int", "float") and v < 0 and f.name not in may_be_negative:
      raise InputError(f.name, f"{v!r} must not be negative")
  if getattr(cfg, "num_labels", None) is not None and cfg.num_labels < 1:
    raise InputError("num_labels", f"must be >= 1 or None (no head), got {cfg.num_labels}")
  if not 0 <= getattr(cfg, "pad_token_id", 0) < getattr(cfg, "vocab_size", 1 << 62):
    raise InputError("pad_token_id", f"{cfg.pad_token_id} is outside the vocabulary")


def hf_num_labels(hf: dict[str, Any]) -> int | None:
  """Labels of a *ForSequenceClassification config (None for a bare encoder)."""
  if not any(str(a).endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
    return None
  labels = hf.get("id2label")
  return len(labels) if isinstance(labels, dict) and labels else hf.get("num_labels", 2)


def split_known(d: dict[str, Any], passthrough: tuple[str, ...], ignored: tuple[str, ...],
                family: str, source: str) -> str:
  """Pops the passthrough (returned as JSON) and ignored fields; anything left is an error."""
  kept = {k: d.pop(k) for k in passthrough + GENERIC_PASSTHROUGH if k in d}
  kept = {k: v for k, v in kept.items() if v is not None}  # None == absent (export writes None)
  for k in ignored + GENERIC_IGNORED:
    d.pop(k, None)
  if unknown := sorted(k for k in d if not k.startswith("_")):
    raise InputError(f"{source}: {unknown[0]}", f"unknown or unsupported {family} option")
  return json.dumps(kept, sort_keys=True)


def with_head_fields(d: dict[str, Any], family: str, num_labels: int | None) -> dict[str, Any]:
  """Adds architectures / id2label, and nulls token ids the source never gave (transformers'
  defaults, e.g. ModernBERT's 50281-50283, may lie outside a small vocabulary)."""
  for k in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id"):
    d.setdefault(k, None)
  d["architectures"] = [f"{family}ForSequenceClassification" if num_labels else f"{family}Model"]
  labels = len(d.get("id2label") or {}) or 2  # transformers' default when id2label is absent
  if num_labels and labels != num_labels:
    d["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    d["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
  return d


class ParamMaker:
  """Creates parameters with logical axis names. The "normal" ones (std 0.02) are filled by `draw`
  from ONE random vector: a threefry draw costs about a second of XLA CPU compile per distinct
  shape, which made a per-parameter init take over ten seconds even for toy models."""

  def __init__(self, dtype: Any = jnp.float32):
    self.dtype = dtype
    self.pending: list[nnx.Param] = []

  def __call__(self, shape: tuple[int, ...], names: tuple[str | None, ...],
               init: str = "normal") -> nnx.Param:
    value = jnp.ones(shape, self.dtype) if init == "ones" else jnp.zeros(shape, self.dtype)
    p = nnx.Param(value, sharding_names=names, eager_sharding=False)
    if init == "normal":
      self.pending.append(p)
    return p

  def draw(self, rngs: nnx.Rngs, std: float = 0.02) -> None:
    sizes = [math.prod(p.get_value().shape) for p in self.pending]
    flat = std * jax.random.normal(rngs.params(), (sum(sizes),), jnp.float32)
    for p, start, size in zip(self.pending, np.cumsum([0] + sizes), sizes):
      chunk = jax.lax.dynamic_slice_in_dim(flat, int(start), size)
      p.set_value(chunk.reshape(p.get_value().shape).astype(self.dtype))
    self.pending = []


def expand(v: Array, ndim: int) -> Array:
  """Left-pads v's shape with 1s to rank ndim (implicit rank promotion is disabled)."""
  return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def add_bias(y: Array, b: Array | None) -> Array:
  return y if b is None else y + expand(b, y.ndim)


def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, computed in float32."""
  x32 = x.astype(jnp.float32)
  centred = x32 - x32.mean(-1, keepdims=True)
  y = centred * jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + eps)
  y = add_bias(y * expand(scale.astype(jnp.float32), y.ndim),
               None if bias is None else bias.astype(jnp.float32))
  return y.astype(x.dtype)


def masked_mean(h_BxLxD: Array, valid_BxL: Array) -> Array:
  """sum_l m_l h_l / sum_l m_l, accumulated in float32; an all-padding row gives 0, not NaN."""
  w = valid_BxL.astype(jnp.float32)
  total = jnp.einsum("bld,bl->bd", h_BxLxD.astype(jnp.float32), w)
  return (total / jnp.maximum(w.sum(-1, keepdims=True), 1.0)).astype(h_BxLxD.dtype)


def load_params(
    make_model: Callable[[], nnx.Module],
    table: dict[str, HfTensor],
    st: SafetensorsFolder,
    prefix: str,
    dtype: Any,
    mesh: Mesh | None,
    rules: LogicalRules,
) -> nnx.Module:
  """Builds the model abstractly, then places every tensor of `table` straight into its sharding."""
  mesh = single_device_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(nnx.eval_shape(make_model))
  shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
  placed = []
  for path, var in nnx.to_flat_state(state):
    spec = table[".".join(map(str, path))]
    key = prefix + spec.key if spec.in_base else spec.key
    shape = tuple(var.get_value().shape)
    per_layer = "{i}" in key
    names = ([key.format(i=spec.first_layer + j) for j in range(shape[0])] if per_layer
             else [key])
    one = shape[1:] if per_layer else shape
    for name in names:
      if st.shape_of(name) != hf_shape(one, spec.layout):
        raise InputError(st.folder / name, f"has shape {st.shape_of(name)}, config.json implies "
                         f"{hf_shape(one, spec.layout)}")

    def produce(names=names, one=one, layout=spec.layout, per_layer=per_layer):
      arrays = [to_ours(st[n], layout, one) for n in names]
      return np.stack(arrays) if per_layer else arrays[0]

    value = place(produce, shape, dtype, shardings[path].get_value(), f"{st.folder}/{key}")
    placed.append((path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(placed))


def export_folder(model: nnx.Module, table: dict[str, HfTensor], prefix: str,
                  hf_config: dict[str, Any], folder: str | os.PathLike) -> None:
  """Writes model.safetensors (HF names and layouts) and config.json into `folder`."""
  tensors: dict[str, np.ndarray] = {}
  dtype = None
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    spec = table[".".join(map(str, path))]
    key = prefix + spec.key if spec.in_base else spec.key
    arr = np.asarray(jax.device_get(var.get_value()))
    dtype = dtype or arr.dtype
    if "{i}" in key:
      for j in range(arr.shape[0]):
        tensors[key.format(i=spec.first_layer + j)] = to_hf(arr[j], spec.layout)
    else:
      tensors[key] = to_hf(arr, spec.layout)
  write_hf_folder(folder, dict(hf_config, dtype=np.dtype(dtype).name), tensors)


def load_family(folder: str | os.PathLike, config_cls: Any, model_cls: Any,
                table_fn: Callable[[Any], dict[str, HfTensor]], base_prefix: str,
                base_probe: str, dtype: Any, mesh: Mesh | None, rules: LogicalRules) -> nnx.Module:
  """A *Model / *ForMaskedLM / *ForSequenceClassification HF folder of one encoder family; the
  classification head is loaded iff the folder has `classifier.weight`.

  `base_prefix` ("model.", "deberta.") prefixes the backbone's tensors in the head-carrying layouts;
  `base_probe` is a backbone tensor name used to detect it.
  """
  folder = pathlib.Path(folder)
  cfg = config_cls.from_hf(read_config_json(folder), str(folder / "config.json"))
  st = SafetensorsFolder(folder)
  prefix = base_prefix if base_prefix + base_probe in st else ""
  num_labels = st.shape_of("classifier.weight")[0] if "classifier.weight" in st else None
  if cfg.num_labels and cfg.num_labels != num_labels:
    raise InputError(folder, f"config.json declares {cfg.num_labels} labels, the checkpoint "
                     f"{'has no classifier.weight' if not num_labels else f'has {num_labels}'}")
  cfg = dataclasses.replace(cfg, num_labels=num_labels)
  return load_params(lambda: model_cls(cfg, rngs=nnx.Rngs(0)), table_fn(cfg), st, prefix, dtype,
                     mesh, rules)
