"""Orbax checkpoints of a run: TrainState (params, optimizer, RNG, step) + the data position.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed at any
moment (kill -9 included) leaves either a whole checkpoint or none; `latest_step` only sees whole
ones. The loop saves only states whose update was finite.

A whole checkpoint can still be damaged later (a flipped byte on disk, a truncated copy, a file
removed by hand). Every save records a digest of the state's bytes (state_digest.py) in its meta;
`restore_latest` restores the newest checkpoint, recomputes the digest, and on any mismatch or
restore error moves that checkpoint aside (into `<workdir>/damaged_checkpoints/`, nothing is
deleted), says so in one line and tries the next older one. So a run never continues from garbage,
and the last intact checkpoint is never rotated away behind a damaged newer one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from darling_jax.errors import InputError
from darling_jax.train.state_digest import state_digest

_log = logging.getLogger(__name__)
DIGEST_KEY = "state_digest"


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data: dict[str, Any]
  meta: dict[str, Any]
  skipped: list[str]  # one line per damaged newer checkpoint that was moved aside


class Checkpointer:
  """Saves/restores {state: TrainState pytree, data: JSON, meta: JSON} under `directory`."""

  def __init__(self, directory: str | os.PathLike, keep: int = 2, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.damaged_dir = self.directory.parent / "damaged_checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data: dict[str, Any], meta: dict[str, Any]) -> None:
    meta = {**meta, DIGEST_KEY: state_digest(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """`abstract_state`: the state's tree of jax.ShapeDtypeStruct with the target shardings.

    Raises:
      CheckpointDamaged: the files do not restore, or the state's digest is not the saved one.
    """
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [""])[0][:200]
      raise CheckpointDamaged(step, f"does not restore ({type(e).__name__}: {first})") from None
    meta = out.meta if isinstance(out.meta, dict) else None
    data = out.data if isinstance(out.data, dict) else None
    if meta is None or data is None:
      raise CheckpointDamaged(step, "its data/meta record is not a JSON object")
    want = meta.get(DIGEST_KEY)
    if want is not None:
      got = state_digest(out.state)
      if got != want:
        raise CheckpointDamaged(step, f"its state digest is {got}, saved as {want}: the state "
                                "files were changed after the save")
    return out.state, data, meta

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """The newest checkpoint that restores and verifies, or None when there is no checkpoint.

    Damaged newer checkpoints are moved to `damaged_dir` (process 0; every process agrees on the
    verdict since the digest is global). Raises InputError when checkpoints exist but none is
    intact.
    """
    skipped: list[str] = []
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        state, data, meta = self.restore(step, abstract_state)
      except CheckpointDamaged as e:
        line = f"checkpoint {self.directory / str(step)} is damaged: {e.reason}"
        _log.warning("%s; moved to %s, trying an older one", line, self.damaged_dir)
        skipped.append(line)
        self._quarantine(step)
        continue
      return Restored(step, state, data, meta, skipped)
    if steps:
      raise InputError(self.directory, "no intact checkpoint: " + " | ".join(skipped) +
                       f" (moved to {self.damaged_dir}); start a new workdir or restore them")
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      self.damaged_dir.mkdir(parents=True, exist_ok=True)
      target = self.damaged_dir / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
      shutil.move(str(self.directory / str(step)), str(target))
    _sync(f"darling_quarantine_{step}")
    self._manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once any host got SIGTERM (multi-host runs)."""
    return bool(self._manager.reached_preemption(step))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class CheckpointDamaged(Exception):
  def __init__(self, step: int, reason: str):
    super().__init__(f"step {step}: {reason}")
    self.step, self.reason = step, reason


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete pytree: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
