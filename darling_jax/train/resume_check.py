"""What a resume may change: a checkpoint means its config; changing that silently mixes two runs.

`changed_fields(saved, current)` lists every dotted config key whose value differs between the
checkpoint's recorded (effective) config and the resuming run's (keys only one side has come from
another darling_jax version and are not compared). Keys under `MAY_CHANGE` (how long
to run, where and how often to log, evaluate and checkpoint) may differ; any other difference
refuses the resume unless the user says so (`darling-jax train --allow-config-change`).
"""

from __future__ import annotations

import json
from typing import Any

from darling_jax.errors import InputError
from darling_jax.train.config import TrainConfig
from darling_jax.train.overrides import to_dict

MAY_CHANGE = ("steps", "log_every", "eval", "checkpoint_every", "keep_checkpoints", "workdir",
              "max_nonfinite_steps", "profile_steps")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def changed_fields(saved: dict[str, Any], current: TrainConfig) -> list[str]:
  """Dotted keys (outside MAY_CHANGE) whose values differ, in a stable order."""
  now = _flat(json.loads(json.dumps(to_dict(current))))
  before = _flat(saved)
  # Keys on one side only are fields another darling_jax version added or removed: not a change
  # the user made, and refusing them would strand every checkpoint across an upgrade.
  keys = sorted(set(now) & set(before))
  free = lambda k: any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)  # noqa: E731
  return [k for k in keys if not free(k) and now[k] != before[k]]


def check_resume(saved: dict[str, Any] | None, current: TrainConfig, step: int,
                 allow: bool) -> list[str]:
  """The changed keys (empty if none); InputError when there are some and `allow` is False."""
  if not isinstance(saved, dict):
    return []
  changed = changed_fields(saved, current)
  if changed and not allow:
    flat = _flat(saved)
    shown = ", ".join(f"{k} (checkpoint: {flat.get(k, '<absent>')!r})" for k in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    raise InputError("config", f"differs from the one checkpoint {step} was trained with: "
                     f"{shown}{more}. Resuming would mix two runs; use a new workdir, or pass "
                     f"--allow-config-change. These may change freely: {', '.join(MAY_CHANGE)}")
  return changed
