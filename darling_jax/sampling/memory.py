"""How many bytes a rollout request needs, checked against the device before anything is allocated.

Axis letters: B prompts, G samples per prompt, R = B * G rows, P prompt length (padded), T new
tokens, L layers, K kv heads, H head dim, N query heads, D width, F MLP width, V vocab.

KV cache (prefix sharing: the prompt part is stored once per prompt, not G times):
  prompt  2 * L * B * P       * K * H * bytes(cache_dtype)
  decode  2 * L * R * (T - 1) * K * H * bytes(cache_dtype)   (the last token's K/V is never needed)
Activations: the larger of the prefill's (scores [B, N, P, P] and MLP [B, P, F] in float32) and a
decode step's (a few float32 [R, V] logit buffers: logits, Gumbel noise, filtered copy, sort).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models.decoder import CACHE_AXES
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sharding.rules import SAMPLING_RULES, LogicalRules, logical_to_spec

_GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes of one rollout request, whole (all devices together) and on the busiest device."""

  prompt_cache: int
  decode_cache: int
  activations: int
  outputs: int
  per_device: int  # what the most loaded device holds (== total without a mesh)

  @property
  def kv_cache(self) -> int:
    return self.prompt_cache + self.decode_cache

  @property
  def total(self) -> int:
    return self.kv_cache + self.activations + self.outputs


def shard_count(shape: tuple[int, ...], names: tuple[str | None, ...], mesh: Mesh | None,
            rules: LogicalRules) -> int:
  """Into how many pieces a tensor of `shape` with logical `names` is cut on `mesh`."""
  if mesh is None:
    return 1
  spec = logical_to_spec(names, rules, mesh, shape)
  pieces = 1
  for axes in spec:
    for ax in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
      pieces *= mesh.shape[ax]
  return pieces


def estimate_bytes(
    model_cfg: DecoderConfig,
    cfg: SamplerConfig,
    num_prompts: int,
    prompt_len: int,
    *,
    mesh: Mesh | None = None,
    rules: LogicalRules = SAMPLING_RULES,
) -> MemoryEstimate:
  """Bytes the sampler allocates for B = num_prompts prompts of padded length P (see module doc)."""
  B, G, P, T = num_prompts, cfg.num_samples, prompt_len, cfg.max_new_tokens
  R, S = B * G, max(T - 1, 1)
  L, K, H = model_cfg.num_layers, model_cfg.num_kv_heads, model_cfg.head_dim
  N, D, F, V = (model_cfg.num_heads, model_cfg.hidden_size, model_cfg.intermediate_size,
                model_cfg.vocab_size)
  cb = np.dtype(cfg.cache_jnp_dtype).itemsize
  prompt_shape, decode_shape = (L, B, P, K, H), (L, R, S, K, H)
  prompt_cache = 2 * math.prod(prompt_shape) * cb
  decode_cache = 2 * math.prod(decode_shape) * cb
  # Prefill builds the prompt cache as a scan output next to its zero-initialised input: 2 copies.
  prefill = prompt_cache + 4 * B * (2 * N * P * P + 3 * P * F + 2 * P * D + V)
  decode = 4 * R * (4 * V + 2 * N * (P + S) + 3 * F + 4 * D)
  outputs = R * T * (4 + 4 + 1) + R * 4 * 4
  activations = max(prefill, decode)
  batch_shards = shard_count((R, V), ("batch", None), mesh, rules)
  per_device = (prompt_cache // shard_count(prompt_shape, CACHE_AXES, mesh, rules)
                + decode_cache // shard_count(decode_shape, CACHE_AXES, mesh, rules)
                + (activations + outputs) // batch_shards)
  return MemoryEstimate(prompt_cache=prompt_cache, decode_cache=decode_cache,
                        activations=activations, outputs=outputs, per_device=per_device)


def host_available_bytes() -> int:
  """MemAvailable from /proc/meminfo (Linux), else free physical pages."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes(mesh: Mesh | None = None) -> tuple[int, bool]:
  """(free bytes, per_device): the least free accelerator memory over the mesh's devices from
  `device.memory_stats()`, or host RAM (shared by all devices, per_device=False) where the
  platform reports no memory stats (CPU)."""
  devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
  free = []
  for d in devices:
    if d.process_index != jax.process_index():
      continue
    stats = d.memory_stats()
    if not stats or "bytes_limit" not in stats:
      return host_available_bytes(), False
    free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  return min(free), True


def check_fits(
    est: MemoryEstimate,
    cfg: SamplerConfig,
    num_prompts: int,
    prompt_len: int,
    *,
    mesh: Mesh | None = None,
    limit_bytes: int | None = None,
) -> None:
  """Raises InputError, with the numbers, when the request cannot fit.

  The detected budget is the least free memory of the mesh's accelerators (compared with the
  busiest device's share) or host RAM (compared with the total). `limit_bytes` overrides it and is
  compared with the total.
  """
  if limit_bytes is None:
    limit, per_device = available_bytes(mesh)
  else:
    limit, per_device = int(limit_bytes), False
  need = est.per_device if per_device else est.total
  if need <= limit:
    return
  scope = "per device" if per_device else "in total"
  raise InputError(
      "sampler",
      f"{num_prompts} prompts x {cfg.num_samples} samples = "
      f"{num_prompts * cfg.num_samples} rollouts "
      f"of {prompt_len} prompt + {cfg.max_new_tokens} new tokens need {need / _GIB:.2f} GiB "
      f"{scope} (KV cache {est.kv_cache / _GIB:.2f} GiB = prompt {est.prompt_cache / _GIB:.2f} + "
      f"decode {est.decode_cache / _GIB:.2f}, cache dtype {cfg.cache_dtype}; activations "
      f"{est.activations / _GIB:.2f} GiB), but only {limit / _GIB:.2f} GiB is available; use fewer "
      "prompts per batch, fewer samples or new tokens, a bfloat16 cache, or more devices",
  )
