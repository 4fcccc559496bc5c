"""Hugging Face model folders: reading their config.json, writing the folder atomically.

Everything is written into a sibling `<folder>.partial` and renamed at the end, so an interrupted
export never leaves a half-written checkpoint under `folder`. Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import jax
import numpy as np

from darling_jax.errors import InputError
from darling_jax.models.safetensors_io import save_safetensors

_TORCH_DTYPE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def read_config_json(folder: str | os.PathLike) -> dict[str, Any]:
  """The folder's config.json as a dict; InputError naming the file when absent or malformed."""
  path = pathlib.Path(folder) / "config.json"
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise InputError(path, "file not found: not a Hugging Face model folder") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(path, f"not a readable JSON file ({e})") from None
  if not isinstance(raw, dict):
    raise InputError(path, "must hold a JSON object")
  return raw


def write_hf_folder(folder: str | os.PathLike, hf_config: Mapping[str, Any],
                    tensors: Mapping[str, np.ndarray], tokenizer: Any = None) -> None:
  if jax.process_index() != 0:
    return
  folder = pathlib.Path(folder)
  tmp = folder.with_name(folder.name + ".partial")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  cfg = dict(hf_config)
  cfg["torch_dtype"] = _TORCH_DTYPE.get(np.dtype(next(iter(tensors.values())).dtype), "bfloat16")
  (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
  save_safetensors(tensors, tmp)
  if tokenizer is not None:
    from darling_jax.tokenization.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, tmp)
  if folder.exists():
    shutil.rmtree(folder)
  os.replace(tmp, folder)
