"""Logical axis names -> mesh axes.

Every parameter is created with `sharding_names` metadata, a tuple of logical axis names (one per
dimension, None for "never shard"). A rules table maps each logical name to a mesh axis (or a tuple of
mesh axes, or None), so one model definition shards differently per role (policy training: FSDP + TP;
sampling: TP only; classifier: replicated or data-parallel) without touching model code.

Logical names used across the package:
  layers    stacked decoder/encoder layers (scanned; never sharded)
  vocab     vocabulary rows of the embedding / LM head
  embed     model width D
  mlp       MLP width F
  heads     query heads N
  kv_heads  key/value heads K
  head_dim  per-head width H
  batch     examples (prompts x generations) in activations and caches
  length    sequence positions in activations and caches
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
LogicalRules = tuple[tuple[str, MeshAxes], ...]

# Training: parameters FSDP-sharded over `fsdp` on their widest non-tensor dim, tensor-parallel over
# `tensor` on heads / MLP; activations' batch over (data, fsdp).
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)

# Sampling: no FSDP (weights are read every decode step, gathering them each step would dominate);
# the fsdp axis carries more rollouts instead.
SAMPLING_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)

# The classifier is small (MiniLM: 22M params): replicate weights, shard pairs over every axis.
CLASSIFIER_RULES: LogicalRules = (
    ("batch", ("data", "fsdp", "tensor")),
    ("length", None),
    ("layers", None),
    ("vocab", None),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("kv_heads", None),
    ("head_dim", None),
)


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: LogicalRules,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> P:
  """PartitionSpec for a tensor whose dims carry logical `names`.

  A mesh axis is used at most once per tensor (first dim that claims it wins), axes absent from
  `mesh` or of size 1 are dropped, and when `shape` is given a dim is only sharded if the mesh
  axes' product divides it (e.g. 3 KV heads on a 2-way tensor axis stay replicated).
  """
  if not names:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out: list[MeshAxes] = []
  for dim, name in enumerate(names):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    for ax in axes_t:
      if ax in used:
        continue
      if mesh is not None and (ax not in mesh.shape or mesh.shape[ax] == 1):
        continue
      kept.append(ax)
    if shape is not None and mesh is not None and kept:
      size = 1
      for ax in kept:
        size *= mesh.shape[ax]
      if shape[dim] % size:
        kept = []
    used.update(kept)
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def _names_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  meta = variable.get_metadata()
  names = meta.get("out_sharding", meta.get("sharding_names"))
  return tuple(names) if names is not None else None


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for every leaf of an nnx.State (abstract or concrete), from its logical names."""

  def one(v: Any) -> Any:
    if isinstance(v, nnx.Variable):
      names = _names_of(v)
      shape = getattr(v.get_value(), "shape", None)
      return v.replace(NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape)))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def activation_sharding(mesh: Mesh, rules: LogicalRules, *names: str | None) -> NamedSharding:
  """NamedSharding for an activation whose dims carry logical `names` (e.g. 'batch', 'length')."""
  return NamedSharding(mesh, logical_to_spec(names, rules, mesh))
