"""When to stop for a preemption: SIGTERM on one host must stop every host at the same step.

Single process: SIGTERM sets a flag the loop reads between steps (it then checkpoints and exits).
Several processes (a pod): a per-process flag would let hosts stop at different steps and deadlock
in the checkpoint's save barrier. There JAX's preemption sync manager (started by
`jax.distributed.initialize`) catches SIGTERM on any host, tells the coordination service, and
`reached_preemption_sync_point(step)` turns True on every host at the same step; Orbax's
`CheckpointManager.reached_preemption` reads it. So this module installs no Python handler then
(it would replace JAX's).
"""

from __future__ import annotations

import signal
from typing import Callable

import jax


class Preemption:
  """Context manager; `due(step)` is True at the step where every host should save and stop."""

  def __init__(self, reached_sync_point: Callable[[int], bool] | None = None):
    self.multi = jax.process_count() > 1
    self._reached = reached_sync_point
    self.raised = False
    self._previous = None

  def __enter__(self) -> Preemption:
    if not self.multi:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.raised = True

  def due(self, step: int) -> bool:
    if self.multi and self._reached is not None and not self.raised:
      self.raised = bool(self._reached(step))
    return self.raised

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
