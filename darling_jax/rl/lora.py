"""LoRA adapters on the decoder's stacked kernels, for single-chip users.

For a kernel W [L, *in, *out] (e.g. q: [L, D, N, H] with in = (D,), out = (N, H); o: [L, N, H, D]
with in = (N, H), out = (D,)) the adapted weight is

  W' = W + (alpha / r) * A @ B,   A [L, *in, r] ~ N(0, 1 / fan_in),   B [L, r, *out] = 0,

so training starts exactly at the base policy. Only A and B are trained (optimizer state shrinks
by the same factor), and the base weights double as the KL reference: no second model copy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.state_tree import flat_values, map_variables

# kernel name -> number of input dims after the layer axis
_IN_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0  # r; 0 disables LoRA (full fine-tuning, the default)
  alpha: float = 16.0  # scale numerator: delta = alpha / r * A @ B
  targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

  def __post_init__(self):
    if self.rank < 0:
      raise InputError("lora.rank", f"must be >= 0, got {self.rank}")
    bad = [t for t in self.targets if t not in _IN_DIMS]
    if bad:
      raise InputError("lora.targets", f"unknown kernels {bad}; choose from {sorted(_IN_DIMS)}")

  @property
  def enabled(self) -> bool:
    return self.rank > 0


def init_lora(base_params: Any, config: LoraConfig, key: jax.Array) -> dict[str, dict[str, Any]]:
  """{target: {"a": [L, *in, r], "b": [L, r, *out]}} in float32."""
  flat = flat_values(base_params)
  out: dict[str, dict[str, Any]] = {}
  for i, name in enumerate(config.targets):
    w = flat[("layers", name)]
    n_in = _IN_DIMS[name]
    L, ins, outs = w.shape[0], w.shape[1:1 + n_in], w.shape[1 + n_in:]
    fan_in = math.prod(ins)
    a = jax.random.normal(jax.random.fold_in(key, i), (L, *ins, config.rank), jnp.float32)
    out[name] = {"a": a / math.sqrt(fan_in), "b": jnp.zeros((L, config.rank, *outs), jnp.float32)}
  return out


def merge_lora(base_params: nnx.State, lora: dict[str, dict[str, Any]],
               config: LoraConfig) -> nnx.State:
  """The base params with every targeted kernel replaced by W + alpha/r * A @ B."""
  scale = config.alpha / config.rank

  def merged(path, var):
    if len(path) == 2 and path[0] == "layers" and path[1] in lora:
      w = var.get_value()
      a, b = lora[path[1]]["a"], lora[path[1]]["b"]
      a_LxIxR = a.reshape(a.shape[0], -1, a.shape[-1])
      b_LxRxO = b.reshape(b.shape[0], b.shape[1], -1)
      d = jnp.einsum("lir,lro->lio", a_LxIxR, b_LxRxO).reshape(w.shape)
      return var.replace((w.astype(jnp.float32) + scale * d).astype(w.dtype))
    return var

  return map_variables(merged, base_params)
