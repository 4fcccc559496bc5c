"""One trainer per workdir: a lock file naming its owner (host, pid, start time).

Two trainers on one workdir would interleave metrics.jsonl and race in the checkpoint manager. The
lock is created atomically (O_EXCL); a lock whose owner was on this host and no longer runs is
stale and taken over; any other existing lock refuses the second trainer at once, naming the
first. Only process 0 of a multi-host run holds it.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

from darling_jax.errors import InputError

LOCK_NAME = ".darling_lock"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Context manager holding `<workdir>/.darling_lock` for this process."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_NAME
    self._held = False

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    owner = {"host": socket.gethostname(), "pid": os.getpid(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        held_by = self._read()
        if self._stale(held_by):
          self.path.unlink(missing_ok=True)
          continue
        raise InputError(self.path.parent, f"is in use by another trainer (pid "
                         f"{held_by.get('pid')} on {held_by.get('host')}, started "
                         f"{held_by.get('started')}); stop it, or use another workdir. If it is "
                         f"not running, remove {self.path}") from None
      with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
      self._held = True
      return
    raise InputError(self.path, "could not be created (another trainer is starting?)")

  def _read(self) -> dict:
    try:
      data = json.loads(self.path.read_text())
      return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
      return {}

  @staticmethod
  def _stale(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
      return False  # another host's lock cannot be checked from here
    return pid != os.getpid() and not _alive(pid)

  def release(self) -> None:
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False
