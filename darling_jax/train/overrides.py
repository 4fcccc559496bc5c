"""`key=value` overrides of frozen config dataclasses, with dotted keys and strict types.

  darling-jax train --config configs/smoke.py steps=10 update.reward.threshold=0.5 \
      sampler.num_samples=4 quality.functions=gsm8k:1.0 mesh.data=-1

A misspelled key or a value of the wrong type is one InputError naming the key (and the closest
valid key), never a silent no-op.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from typing import Any, Sequence

from darling_jax.errors import InputError


def _field_types(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _parse_scalar(text: str, typ: Any, key: str) -> Any:
  origin = typing.get_origin(typ)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if text.lower() in ("none", "null") and len(args) < len(typing.get_args(typ)):
      return None
    errors = []
    for a in args:
      try:
        return _parse_scalar(text, a, key)
      except InputError as e:
        errors.append(e.problem)
    raise InputError(key, f"cannot parse {text!r} as {typ} ({'; '.join(errors)})")
  if origin is tuple:
    args = typing.get_args(typ)
    items = _split_list(text)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_parse_scalar(t, args[0], key) for t in items)
    if len(items) != len(args):
      raise InputError(key, f"expects {len(args)} comma-separated values, got {text!r}")
    return tuple(_parse_scalar(t, a, key) for t, a in zip(items, args))
  if typ is bool:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise InputError(key, f"expects true/false, got {text!r}")
  if typ is int:
    try:
      return int(text)
    except ValueError:
      raise InputError(key, f"expects an integer, got {text!r}") from None
  if typ is float:
    try:
      return float(text)
    except ValueError:
      raise InputError(key, f"expects a number, got {text!r}") from None
  if typ is str:
    return text
  if isinstance(typ, type) and issubclass(typ, enum.Enum):
    try:
      return typ(text)
    except ValueError:
      raise InputError(key, f"unknown value {text!r}; choose from "
                       f"{[m.value for m in typ]}") from None
  raise InputError(key, f"cannot be set from the command line (type {typ})")


def _split_list(text: str) -> list[str]:
  text = text.strip()
  if text.startswith("["):
    try:
      return [str(x) if not isinstance(x, list) else ":".join(map(str, x)) for x in json.loads(text)]
    except json.JSONDecodeError as e:
      raise InputError(text, f"is not a valid JSON list ({e})") from None
  return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _pair_tuple(text: str, typ: Any, key: str):
  """tuple[tuple[str, float], ...] from 'a:1.0,b:0.5' (the quality-function mix)."""
  inner = typing.get_args(typ)[0]
  out = []
  for item in _split_list(text):
    parts = item.split(":")
    out.append(_parse_scalar(",".join(parts), inner, key))
  return tuple(out)


def _parse_field(config: Any, name: str, text: str, key: str) -> Any:
  typ = _field_types(type(config))[name]
  if dataclasses.is_dataclass(getattr(config, name)):
    raise InputError(key, "is a config section; set one of its fields (e.g. "
                     f"{key}.{dataclasses.fields(getattr(config, name))[0].name}=...)")
  args = typing.get_args(typ)
  if (typing.get_origin(typ) is tuple and len(args) == 2 and args[1] is Ellipsis
      and typing.get_origin(args[0]) is tuple):
    return _pair_tuple(text, typ, key)
  return _parse_scalar(text, typ, key)


def _check_name(config: Any, name: str, key: str) -> None:
  if not dataclasses.is_dataclass(config):
    raise InputError(key, "is not a config section")
  names = [f.name for f in dataclasses.fields(config)]
  if name not in names:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; fields: {', '.join(names)}"
    raise InputError(key, f"unknown config key {name!r} in {type(config).__name__}{hint}")


def _apply(config: Any, tree: dict[str, Any], prefix: str) -> Any:
  """Rebuilds `config` once with every change under it, so each section's cross-field checks see
  all of the user's overrides together (not each one alone)."""
  changes = {}
  for name, sub in tree.items():
    key = prefix + name
    _check_name(config, name, key)
    if isinstance(sub, dict):
      changes[name] = _apply(getattr(config, name), sub, key + ".")
    else:
      changes[name] = _parse_field(config, name, sub, key)
  try:
    return dataclasses.replace(config, **changes)
  except InputError:
    raise
  except (TypeError, ValueError) as e:
    raise InputError(prefix.rstrip(".") or "config", str(e)) from None


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
  """A copy of `config` (a frozen dataclass) with every dotted `key=value` override applied."""
  tree: dict[str, Any] = {}
  for item in overrides:
    if "=" not in item:
      raise InputError(item, "overrides are key=value (e.g. steps=10 or sampler.temperature=0.7)")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
      child = node.setdefault(part, {})
      if not isinstance(child, dict):
        raise InputError(key, f"{part!r} was also set as a value")
      node = child
    if isinstance(node.get(parts[-1]), dict):
      raise InputError(key, "is a config section, also given sub-keys")
    node[parts[-1]] = text.strip()
  return _apply(config, tree, "") if tree else config


def to_dict(config: Any) -> Any:
  """JSON-able view of a config (enums by value), for logs and checkpoints."""
  if dataclasses.is_dataclass(config):
    return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
  if isinstance(config, enum.Enum):
    return config.value
  if isinstance(config, (tuple, list)):
    return [to_dict(x) for x in config]
  return config
