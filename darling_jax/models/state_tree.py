"""Walking NNX states by parameter path (("layers", "q"), ("embed",), ...)."""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def map_variables(fn: Callable[[tuple[str, ...], nnx.Variable], Any], state: Any) -> Any:
  """Maps `fn(path, variable)` over every Variable of an nnx.State, keeping the tree structure."""
  return jax.tree_util.tree_map_with_path(lambda p, v: fn(path_names(p), v), state, is_leaf=_is_var)


def flat_values(state: Any) -> dict[tuple[str, ...], Any]:
  """{path: raw value} for every Variable of an nnx.State."""
  out: dict[tuple[str, ...], Any] = {}
  map_variables(lambda p, v: out.__setitem__(p, v.get_value()), state)
  return out
