"""HF model folders <-> `Decoder`: config.json + safetensors (single or sharded) + tokenizer files.

Weights go straight into their shardings: every device reads only its block from the memory-mapped
safetensors files (`place_sliced`), never a full replica.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.models.hf_folder import read_config_json, write_hf_folder
from darling_jax.models.safetensors_io import SafetensorsFolder, place_sliced
from darling_jax.models.state_tree import flat_values, map_variables
from darling_jax.sharding.mesh import single_device_mesh
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules, state_shardings

Convert = Callable[[np.ndarray], np.ndarray]


def _identity(w: np.ndarray) -> np.ndarray:
  return w


def layer_tensor_map(cfg: DecoderConfig) -> dict[str, tuple[str, Convert, Convert]]:
  """Our per-layer param -> (HF name under model.layers.{i}., HF->ours view, ours->HF)."""
  N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
  # HF Linear weights are [out, in]; ours are einsum kernels [in, ...out].
  proj_in = lambda heads: (lambda w: w.reshape(heads, H, D).transpose(2, 0, 1),  # noqa: E731
                           lambda a: a.transpose(1, 2, 0).reshape(heads * H, D))
  head_bias = lambda heads: (lambda b: b.reshape(heads, H), lambda a: a.reshape(heads * H))  # noqa
  m: dict[str, tuple[str, Convert, Convert]] = {
      "attn_norm": ("input_layernorm.weight", _identity, _identity),
      "q": ("self_attn.q_proj.weight", *proj_in(N)),
      "k": ("self_attn.k_proj.weight", *proj_in(K)),
      "v": ("self_attn.v_proj.weight", *proj_in(K)),
      "o": ("self_attn.o_proj.weight", lambda w: w.reshape(D, N, H).transpose(1, 2, 0),
            lambda a: a.transpose(2, 0, 1).reshape(D, N * H)),
      "mlp_norm": ("post_attention_layernorm.weight", _identity, _identity),
      "gate": ("mlp.gate_proj.weight", np.transpose, np.transpose),
      "up": ("mlp.up_proj.weight", np.transpose, np.transpose),
      "down": ("mlp.down_proj.weight", np.transpose, np.transpose),
  }
  if cfg.qkv_bias:
    m["q_bias"] = ("self_attn.q_proj.bias", *head_bias(N))
    m["k_bias"] = ("self_attn.k_proj.bias", *head_bias(K))
    m["v_bias"] = ("self_attn.v_proj.bias", *head_bias(K))
  if cfg.o_bias:
    m["o_bias"] = ("self_attn.o_proj.bias", _identity, _identity)
  if cfg.qk_norm:
    m["q_norm"] = ("self_attn.q_norm.weight", _identity, _identity)
    m["k_norm"] = ("self_attn.k_norm.weight", _identity, _identity)
  if cfg.mlp_bias:
    m["gate_bias"] = ("mlp.gate_proj.bias", _identity, _identity)
    m["up_bias"] = ("mlp.up_proj.bias", _identity, _identity)
    m["down_bias"] = ("mlp.down_proj.bias", _identity, _identity)
  return m


def read_config(folder: pathlib.Path) -> DecoderConfig:
  return DecoderConfig.from_hf(read_config_json(folder), source=str(folder / "config.json"))


def abstract_decoder(cfg: DecoderConfig, param_dtype, dtype) -> Decoder:
  return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype))


Sources = dict[tuple[str, ...], Callable[[tuple[slice, ...]], np.ndarray]]
ModuleT = TypeVar("ModuleT", bound=nnx.Module)


def place_module(abstract: ModuleT, sources: Sources, *, mesh: Mesh | None,
                 rules: LogicalRules) -> ModuleT:
  """`abstract` (from nnx.eval_shape) with every param placed from `sources[path](index_block)`.

  Each param goes straight into the sharding its logical names get under `rules` on `mesh`.
  """
  mesh = mesh or single_device_mesh()
  graphdef, abs_state = nnx.split(abstract)
  shardings = state_shardings(abs_state, mesh, rules)
  flat_shardings = flat_values(shardings)

  def fill(path: tuple[str, ...], var: nnx.Variable):
    value = var.get_value()
    return var.replace(place_sliced(value.shape, value.dtype, flat_shardings[path], sources[path]))

  return nnx.merge(graphdef, map_variables(fill, abs_state))


def build_sharded(
    cfg: DecoderConfig,
    sources: Sources,
    *,
    param_dtype,
    dtype,
    mesh: Mesh | None,
    rules: LogicalRules,
) -> Decoder:
  """A Decoder whose every param is placed from `sources[path](index_block)` into its sharding."""
  return place_module(abstract_decoder(cfg, param_dtype, dtype), sources, mesh=mesh, rules=rules)


def _checked(st: SafetensorsFolder, name: str, expected: tuple[int, ...]) -> None:
  shape = st.shape_of(name)
  if shape != tuple(expected):
    raise InputError(st.folder, f"tensor {name!r} has shape {shape}, config.json implies "
                     f"{tuple(expected)}")


def load_hf_decoder(
    folder: str | os.PathLike,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
) -> Decoder:
  """Loads a Llama / Qwen2 / Qwen3 HF folder into a (sharded) Decoder."""
  folder = pathlib.Path(folder)
  cfg = read_config(folder)
  st = SafetensorsFolder(folder)
  prefix = "model." if "model.embed_tokens.weight" in st else ""
  if f"{prefix}embed_tokens.weight" not in st:
    raise InputError(folder, "checkpoint has no model.embed_tokens.weight: not a supported decoder")
  sources = decoder_sources(st, cfg, prefix)
  return build_sharded(cfg, sources, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules)


def decoder_sources(st: SafetensorsFolder, cfg: DecoderConfig, prefix: str) -> Sources:
  """{our param path: block reader} for a decoder stored under `prefix` ("model." or "").

  Every tensor's shape is checked against `cfg` first (InputError naming the tensor).
  """
  D, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_layers
  ours = abstract_decoder(cfg, jnp.float32, jnp.float32)
  shapes = {p: v.shape for p, v in flat_values(nnx.split(ours)[1]).items()}
  sources: Sources = {}

  _checked(st, f"{prefix}embed_tokens.weight", (V, D))
  sources[("embed",)] = lambda idx: st[f"{prefix}embed_tokens.weight"][idx]
  _checked(st, f"{prefix}norm.weight", (D,))
  sources[("final_norm",)] = lambda idx: st[f"{prefix}norm.weight"][idx]
  if not cfg.tie_word_embeddings:
    if "lm_head.weight" not in st:
      raise InputError(st.folder, "tie_word_embeddings is false but lm_head.weight is missing")
    _checked(st, "lm_head.weight", (V, D))
    sources[("lm_head",)] = lambda idx: st["lm_head.weight"][idx[::-1]].T

  for ours_name, (hf_name, to_ours, to_hf) in layer_tensor_map(cfg).items():
    names = [f"{prefix}layers.{i}.{hf_name}" for i in range(L)]
    expected = to_hf(np.empty(shapes[("layers", ours_name)][1:], np.uint8)).shape
    for n in names:
      _checked(st, n, expected)

    def stacked(idx, names=names, to_ours=to_ours):
      layers = range(L)[idx[0]]
      return np.stack([np.asarray(to_ours(st[names[i]])[idx[1:]]) for i in layers])

    sources[("layers", ours_name)] = stacked
  return sources


def _host(x: jax.Array) -> np.ndarray:
  if not x.is_fully_addressable:  # multi-host: every process gathers, process 0 writes
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def decoder_to_hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
  cfg = model.config
  params = {p: _host(v) for p, v in flat_values(nnx.split(model)[1]).items()}
  out = {"model.embed_tokens.weight": params[("embed",)],
         "model.norm.weight": params[("final_norm",)]}
  if not cfg.tie_word_embeddings:
    out["lm_head.weight"] = params[("lm_head",)].T
  for ours_name, (hf_name, _, to_hf) in layer_tensor_map(cfg).items():
    stacked = params[("layers", ours_name)]
    for i in range(cfg.num_layers):
      out[f"model.layers.{i}.{hf_name}"] = np.ascontiguousarray(to_hf(stacked[i]))
  return out


def export_hf(model: Decoder, folder: str | os.PathLike, tokenizer: Any = None) -> None:
  """Writes a HF folder (config.json, safetensors, tokenizer) that transformers loads as-is."""
  write_hf_folder(folder, model.config.to_hf(), decoder_to_hf_tensors(model), tokenizer)
