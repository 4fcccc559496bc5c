"""A process pool that gives every call a hard deadline: hung or crashed workers are replaced.

Why processes, and why not math-verify's own timeout: sympy can hang inside one C-level bignum
operation (`9**9**9**9`), blow the C stack on deep nesting, or allocate without bound. math-verify's
timeout is `signal.alarm`, which only works on the main thread (the trainer's reward call may run on
another) and cannot interrupt a single long C call. A separate process can always be killed.

Design:
  * Workers start with the "forkserver" (default on POSIX) or "spawn" method, never "fork": the
    parent runs JAX's thread pools, and forking a multi-threaded process can deadlock the child.
    With forkserver, `preload` modules are imported once in the fork server, so replacing a killed
    worker costs a fork (milliseconds), not a fresh interpreter importing sympy (a second or more).
  * `map(items)` sends each idle worker a chunk of items (one message per chunk, so IPC stays
    small) and the worker answers item by item. Each item's clock starts when the worker is known
    to start it (chunk sent, or the previous item's answer received), so an item never gets less
    than `timeout_s` of its own. An item past `timeout_s` gets `default`, its worker is SIGKILLed
    and a replacement is started; the rest of its chunk goes back to the queue. A worker that dies
    (segfault, stack overflow, OOM) gives its current item `default` and is replaced the same way.
    An item whose task raises gets `default` and the worker lives on.
  * `batch_timeout_s` bounds a whole `map` call: when it passes, every unfinished item gets
    `default` and busy workers are killed, so a training step never waits longer for rewards.
  * Workers cap their address space (`memory_limit_mb`, POSIX only) so a runaway bignum raises
    MemoryError in the worker instead of swapping the machine, ignore SIGINT (the parent owns ^C),
    and are shut down at interpreter exit (weakref.finalize and an atexit hook) and reaped, as are
    multiprocessing's fork server and resource tracker (no zombies, even under a non-reaping init).
  * Spawned and fork-server children re-import the parent's `__main__` module, as with any
    multiprocessing code: a script that builds a pool must keep its top level under
    `if __name__ == "__main__":` (notebooks, pytest and the `darling-jax` CLI need nothing).
  * The parent never uses signals, so `map` may be called from any thread; calls are serialised.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import enum
import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Sequence

from darling_jax.errors import InputError

_log = logging.getLogger(__name__)

# A replacement that cannot even start this many times in a row is an environment problem
# (missing package, no memory), not a model-output problem: raise instead of scoring 0 forever.
_MAX_START_FAILURES = 3


class StartMethod(enum.Enum):
  """How worker processes are created (never "fork"; see the module docstring)."""

  FORKSERVER = "forkserver"
  SPAWN = "spawn"


def _default_start_method() -> StartMethod:
  if "forkserver" in multiprocessing.get_all_start_methods():
    return StartMethod.FORKSERVER
  return StartMethod.SPAWN


@dataclasses.dataclass(frozen=True)
class PoolConfig:
  """Settings of a `DeadlinePool`.

  Attributes:
    num_workers: worker processes (each verifies one item at a time).
    timeout_s: hard limit on one item, in seconds, measured by the parent.
    batch_timeout_s: hard limit on one `map` call, in seconds; None: only per-item limits.
    start_method: forkserver (fast replacement) or spawn.
    memory_limit_mb: address-space cap per worker (RLIMIT_AS); None: no cap. A worker with
      numpy + sympy + math-verify imported maps about 200 MB.
    startup_timeout_s: how long a starting worker may take to import and warm up.
    preload: modules the fork server imports once (forkserver only).
  """

  num_workers: int = 2
  timeout_s: float = 5.0
  batch_timeout_s: float | None = None
  start_method: StartMethod = dataclasses.field(default_factory=_default_start_method)
  memory_limit_mb: int | None = 2048
  startup_timeout_s: float = 120.0
  preload: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.num_workers, int) or self.num_workers < 1:
      raise InputError("PoolConfig.num_workers", f"must be an int >= 1, got {self.num_workers!r}")
    for field in ("timeout_s", "startup_timeout_s"):
      value = getattr(self, field)
      if not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InputError(f"PoolConfig.{field}", f"must be a finite number > 0, got {value!r}")
    if self.batch_timeout_s is not None and not (
        isinstance(self.batch_timeout_s, (int, float)) and 0 < self.batch_timeout_s < math.inf):
      raise InputError(
          "PoolConfig.batch_timeout_s", f"must be None or > 0, got {self.batch_timeout_s!r}")
    if not isinstance(self.start_method, StartMethod):
      raise InputError(
          "PoolConfig.start_method",
          f"must be one of {[m.value for m in StartMethod]}, got {self.start_method!r}")
    if self.memory_limit_mb is not None and (
        not isinstance(self.memory_limit_mb, int) or self.memory_limit_mb < 256):
      raise InputError("PoolConfig.memory_limit_mb",
                       f"must be None or an int >= 256, got {self.memory_limit_mb!r}")


@dataclasses.dataclass(frozen=True)
class MapStats:
  """What happened in one `map` call (for logs and tests)."""

  items: int = 0
  ok: int = 0  # the task returned
  errors: int = 0  # the task raised (worker kept)
  timed_out: int = 0  # past timeout_s (worker killed)
  crashed: int = 0  # the worker died under it
  unfinished: int = 0  # not done when batch_timeout_s passed
  max_item_s: float = 0.0  # longest single item, as the parent measured it
  wall_s: float = 0.0


def _worker_main(conn, task_ref: str, init_ref: str | None, memory_limit_mb: int | None) -> None:
  """Worker loop: import the task, warm up, then answer chunks item by item."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    if memory_limit_mb is not None:
      import resource  # pylint: disable=import-outside-toplevel
      limit = memory_limit_mb * 2**20
      resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    task = _resolve(task_ref)
    if init_ref is not None:
      _resolve(init_ref)()
  except BaseException:  # pylint: disable=broad-except
    conn.send(("failed", traceback.format_exc(limit=5)))
    return
  conn.send(("ready", os.getpid()))
  while True:
    try:
      chunk = conn.recv()
    except (EOFError, OSError):
      return
    if chunk is None:
      return
    for index, item in chunk:
      try:
        result, ok = task(item), True
      except Exception:  # pylint: disable=broad-except
        result, ok = None, False
      conn.send((index, result, ok))


def _resolve(ref: str) -> Callable[..., Any]:
  """"package.module:function" -> the function (so tasks are named, not pickled closures)."""
  module, _, name = ref.partition(":")
  obj: Any = importlib.import_module(module)
  for part in name.split("."):
    obj = getattr(obj, part)
  return obj


class _Worker:
  """Parent-side handle of one worker process."""

  def __init__(self, ctx, task_ref: str, init_ref: str | None, memory_limit_mb: int | None):
    self.conn, child_conn = ctx.Pipe(duplex=True)
    self.process = ctx.Process(
        target=_worker_main, args=(child_conn, task_ref, init_ref, memory_limit_mb),
        daemon=True, name="darling-reward-worker")
    self.process.start()
    child_conn.close()  # so the parent sees EOF when the child dies
    self.started_at = time.monotonic()
    self.ready = False
    self.chunk: collections.deque[int] = collections.deque()  # items sent, not yet answered
    self.item_started = 0.0  # when the parent knew the current item (chunk[0]) started

  def kill(self) -> None:
    """SIGKILL and reap (joining is what prevents a zombie)."""
    try:
      if self.process.is_alive():
        self.process.kill()
      self.process.join(timeout=5.0)
    except (OSError, ValueError, AssertionError):
      pass
    self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
  """Asks idle workers to exit, then kills whatever is left; reaps all. Idempotent."""
  for w in workers:
    try:
      w.conn.send(None)
    except (OSError, ValueError):
      pass
  deadline = time.monotonic() + 1.0
  for w in workers:
    try:
      w.process.join(timeout=max(0.0, deadline - time.monotonic()))
    except (OSError, ValueError, AssertionError):
      pass
    w.kill()
  workers.clear()


_live_pools: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _at_exit() -> None:
  """Stops every pool's workers, then multiprocessing's fork server and resource tracker.

  Those two helpers are children of this process; left to exit after us they become orphans, and
  an init that does not reap (as in some containers) keeps them as zombies. Workers go first so the
  fork server never leaves orphans of its own. `_stop` is private but present in 3.11-3.13; it is
  looked up defensively.
  """
  for pool in list(_live_pools):
    pool._finalizer()  # pylint: disable=protected-access
  for module, attr in (("multiprocessing.forkserver", "_forkserver"),
                       ("multiprocessing.resource_tracker", "_resource_tracker")):
    stop = getattr(getattr(sys.modules.get(module), attr, None), "_stop", None)
    if stop is not None:
      try:
        stop()
      except Exception:  # pylint: disable=broad-except
        pass


class DeadlinePool:
  """Runs `task(item)` for many items in worker processes, each under a hard deadline.

  Args:
    task: "module:function" of a top-level function `item -> result`, imported in each worker.
      Items and results must pickle.
    config: pool settings.
    initializer: optional "module:function" run once in each worker before it takes work (imports,
      warm-up); not counted against any item's deadline.
    default: the result of an item that timed out, crashed its worker, raised, or was unfinished.

  Workers start on the first `map` call, not at construction. Use `close()` (or `with`) to stop
  them early; they are stopped at interpreter exit regardless.
  """

  def __init__(self, task: str, config: PoolConfig = PoolConfig(), *,
               initializer: str | None = None, default: Any = 0.0):
    self.config = config
    self.default = default
    self._task_ref = task
    self._init_ref = initializer
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._ctx = None
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)
    self._started = False  # a worker has been ready since the last close()
    self.last_stats = MapStats()

  def close(self) -> None:
    """Stops and reaps all workers. The pool restarts them if `map` is called again."""
    with self._lock:
      _shutdown(self._workers)
      self._started = False

  def __enter__(self) -> DeadlinePool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def worker_pids(self) -> list[int]:
    """Process ids of the current workers (for tests and debugging)."""
    return [w.process.pid for w in self._workers if w.process.pid is not None]

  def _context(self):
    if self._ctx is None:
      self._ctx = multiprocessing.get_context(self.config.start_method.value)
      if self.config.start_method is StartMethod.FORKSERVER and self.config.preload:
        # Global to the fork server, and only effective before it starts; harmless otherwise.
        self._ctx.set_forkserver_preload(list(self.config.preload))
    return self._ctx

  def _start_worker(self) -> _Worker:
    global _exit_hook_registered
    if not _exit_hook_registered:
      # Registered after weakref.finalize's own hook, so it runs first (atexit is LIFO).
      atexit.register(_at_exit)
      _exit_hook_registered = True
    _live_pools.add(self)
    w = _Worker(self._context(), self._task_ref, self._init_ref, self.config.memory_limit_mb)
    self._workers.append(w)
    return w

  def _replace(self, w: _Worker) -> None:
    w.kill()
    self._workers.remove(w)
    self._start_worker()

  def start(self) -> None:
    """Starts the workers now and waits until they are ready (otherwise the first `map` does)."""
    with self._lock:
      self._start_all(min_ready=self.config.num_workers)
      self._started = True

  def _start_all(self, min_ready: int) -> None:
    """Replaces dead workers, tops up to `num_workers`, and waits until `min_ready` are ready."""
    for w in list(self._workers):  # a worker may have died while idle (OOM killer, ...)
      if not w.process.is_alive():
        self._replace(w)
    while len(self._workers) < self.config.num_workers:
      self._start_worker()
    failures = 0
    while sum(w.ready for w in self._workers) < min_ready:
      starting = [w for w in self._workers if not w.ready]
      deadline = min(w.started_at for w in starting) + self.config.startup_timeout_s
      ready = multiprocessing.connection.wait(
          [w.conn for w in starting], timeout=max(0.0, deadline - time.monotonic()))
      if not ready:
        raise RuntimeError(
            f"reward worker did not start within {self.config.startup_timeout_s} s")
      for w in starting:
        if w.conn not in ready:
          continue
        try:
          msg = w.conn.recv()
        except (EOFError, OSError):
          failures += 1
          if failures >= _MAX_START_FAILURES:
            raise RuntimeError(
                f"reward workers died {failures} times while starting "
                f"(exit code {w.process.exitcode})") from None
          self._replace(w)
          continue
        if msg[0] == "failed":
          raise RuntimeError(f"reward worker failed to start:\n{msg[1]}")
        w.ready = True

  def map(self, items: Sequence[Any]) -> tuple[list[Any], MapStats]:
    """Results of `task(item)` for every item, in order; `default` where an item failed.

    Returns:
      (results, stats). When `batch_timeout_s` is set, the wall time is at most that plus the
      time to kill the busy workers, except that a cold pool (first call, or first after
      `close`) first waits for one worker to start. Otherwise at most about
      ceil(n / num_workers) * `timeout_s` for n items that all hang, plus replacement start-ups.
    """
    with self._lock:
      results, stats = self._map(list(items))
      self.last_stats = stats
      return results, stats

  def _map(self, items: list[Any]) -> tuple[list[Any], MapStats]:
    cfg = self.config
    n = len(items)
    results = [self.default] * n
    counts = collections.Counter()
    max_item_s = 0.0
    if n == 0:
      return results, MapStats()
    # A cold start (first call, or first after close) is not billed to the batch: it imports
    # sympy. Afterwards the clock starts now: replacements still starting join the work as soon as
    # they report ready, and if none is ready by the batch deadline the items are unfinished.
    cold = not self._started
    if cold:
      self._start_all(min_ready=1)
      self._started = True
    t0 = time.monotonic()
    if not cold:
      self._start_all(min_ready=0)
    queue = collections.deque(range(n))
    chunk_size = max(1, min(16, n // (4 * cfg.num_workers)))
    batch_deadline = math.inf if cfg.batch_timeout_s is None else t0 + cfg.batch_timeout_s
    start_failures = 0

    def finish(w: _Worker, outcome: str, now: float) -> None:
      nonlocal max_item_s
      counts[outcome] += 1
      max_item_s = max(max_item_s, now - w.item_started)
      w.chunk.popleft()
      w.item_started = now

    while queue or any(w.chunk for w in self._workers):
      now = time.monotonic()
      if now >= batch_deadline:
        break
      for w in list(self._workers):  # hand out work
        if w.ready and not w.chunk and queue:
          chunk = [queue.popleft() for _ in range(min(chunk_size, len(queue)))]
          try:
            w.conn.send([(i, items[i]) for i in chunk])
          except (OSError, ValueError):  # died while idle: nothing of this chunk ran
            queue.extendleft(reversed(chunk))
            self._replace(w)
            continue
          w.chunk.extend(chunk)
          w.item_started = time.monotonic()
      next_deadline = batch_deadline
      for w in self._workers:
        if w.chunk:
          next_deadline = min(next_deadline, w.item_started + cfg.timeout_s)
        elif not w.ready:
          next_deadline = min(next_deadline, w.started_at + cfg.startup_timeout_s)
      waitables = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
      ready = multiprocessing.connection.wait(
          waitables, timeout=max(0.0, next_deadline - time.monotonic()))
      now = time.monotonic()
      for w in list(self._workers):
        dead = False
        if w.conn in ready:  # answers first: a worker may answer and then die
          try:
            while w.conn.poll():
              msg = w.conn.recv()
              if not w.ready:
                if msg[0] == "failed":
                  raise RuntimeError(f"reward worker failed to start:\n{msg[1]}")
                w.ready = True
                start_failures = 0
                continue
              index, result, ok = msg
              if w.chunk and w.chunk[0] == index:
                results[index] = result if ok else self.default
                finish(w, "ok" if ok else "errors", now)
          except (EOFError, OSError):
            dead = True
        if dead or (w.process.sentinel in ready and not w.process.is_alive()):
          if w.chunk:
            finish(w, "crashed", now)
            queue.extendleft(reversed(w.chunk))
            w.chunk.clear()
          elif not w.ready:
            start_failures += 1
            if start_failures >= _MAX_START_FAILURES:
              raise RuntimeError(
                  f"reward workers died {start_failures} times while starting "
                  f"(exit code {w.process.exitcode})")
          self._replace(w)
        elif w.chunk and now - w.item_started > cfg.timeout_s:
          _log.info("reward item %d exceeded %.1f s: killing worker %s",
                    w.chunk[0], cfg.timeout_s, w.process.pid)
          finish(w, "timed_out", now)
          queue.extendleft(reversed(w.chunk))
          w.chunk.clear()
          self._replace(w)
        elif not w.ready and now - w.started_at > cfg.startup_timeout_s:
          raise RuntimeError(
              f"reward worker did not start within {cfg.startup_timeout_s} s")

    if queue or any(w.chunk for w in self._workers):  # batch deadline: abandon what is left
      now = time.monotonic()
      for w in list(self._workers):
        if w.chunk:
          max_item_s = max(max_item_s, now - w.item_started)
          counts["unfinished"] += len(w.chunk)
          w.chunk.clear()
          self._replace(w)
      counts["unfinished"] += len(queue)
    stats = MapStats(
        items=n, max_item_s=max_item_s, wall_s=time.monotonic() - t0,
        **{k: counts[k] for k in ("ok", "errors", "timed_out", "crashed", "unfinished")})
    return results, stats
