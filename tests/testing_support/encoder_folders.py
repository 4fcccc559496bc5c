"""Helpers the encoder-family tests share: edited copies of a checkpoint folder, and the tensor
names/shapes our loader's table produces (to compare with the ones transformers builds)."""

import json
import pathlib
from types import ModuleType
from typing import Any

import numpy as np
from flax import nnx

from darling_jax.models.encoders.hf_encoder import hf_shape
from darling_jax.models.safetensors_io import SafetensorsFolder, save_safetensors


def edited_copy(folder: pathlib.Path, dest: pathlib.Path, config_edit=None,
                tensor_edit=None) -> pathlib.Path:
  """A copy of an HF folder with config_edit(config dict) / tensor_edit(tensor dict) applied."""
  dest.mkdir()
  cfg = json.loads((folder / "config.json").read_text())
  if config_edit:
    config_edit(cfg)
  (dest / "config.json").write_text(json.dumps(cfg))
  tensors = {k: np.array(v) for k, v in SafetensorsFolder(folder).items()}
  if tensor_edit:
    tensor_edit(tensors)
  save_safetensors(tensors, dest)
  return dest


def perturb_and_save(model, folder: pathlib.Path, norm_weight: str):
  """Re-draws every weight of a transformers model, then saves it to folder; returns the model.

  Init leaves norms at 1, biases at 0 and attention nearly uniform: random values make every path
  count. Parameters whose name contains `norm_weight` are centred on 1.
  """
  import torch

  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.2) + (norm_weight in name))
  model.save_pretrained(folder)
  return model


def table_shapes(family: ModuleType, cfg: Any, base_prefix: str) -> dict[str, tuple[int, ...]]:
  """{HF tensor name: shape} that family.tensor_table maps our parameters onto (per layer)."""
  abstract = nnx.eval_shape(lambda: family.Model(cfg, rngs=nnx.Rngs(0)))
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    spec = family.tensor_table(cfg)[".".join(path)]
    key, shape = (base_prefix if spec.in_base else "") + spec.key, var.get_value().shape
    rows = range(spec.first_layer, spec.first_layer + shape[0]) if "{i}" in key else [None]
    for i in rows:
      out[key.format(i=i)] = hf_shape(shape[1:] if i is not None else shape, spec.layout)
  return out
