"""The time-limited worker pool: results, per-item deadlines, crashes, recovery, clean shutdown.

Tasks are stdlib callables wrapped in functools.partial and run through `operator.call`, so the
workers never need to import this test module (pytest's importlib mode makes it unimportable there).
"""

import functools
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from darling_jax.errors import InputError
from darling_jax.rewards.deadline_pool import DeadlinePool, PoolConfig, StartMethod

TIMEOUT_S = 1.0
# Killing and reaping a worker and a loaded 2-core machine's scheduling add to a deadline.
MARGIN_S = 1.5


def sqrt(x):
  return functools.partial(math.sqrt, x)


def hang():
  return functools.partial(time.sleep, 60)


def crash():
  return functools.partial(os._exit, 3)  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def pool():
  # Spawn here (the math tests use the default forkserver), so both start methods are covered.
  # 512 MB address space is plenty for these tasks (a worker maps about 200 MB).
  with DeadlinePool("operator:call", PoolConfig(
      num_workers=2, timeout_s=TIMEOUT_S, memory_limit_mb=512,
      start_method=StartMethod.SPAWN)) as p:
    p.start()
    yield p


def test_results_in_order(pool):
  values, stats = pool.map([sqrt(float(i)) for i in range(100)])
  assert values == [math.sqrt(i) for i in range(100)]
  assert stats.items == stats.ok == 100 and stats.timed_out == stats.crashed == 0


def test_empty(pool):
  assert pool.map([]) == ([], pool.last_stats)


def test_task_error_gives_default_and_keeps_worker(pool):
  pids = pool.worker_pids()
  values, stats = pool.map([sqrt(-1.0), sqrt(9.0)])
  assert values == [0.0, 3.0]
  assert stats.errors == 1 and stats.ok == 1
  assert pool.worker_pids() == pids


def test_hang_is_killed_and_pool_recovers(pool):
  pids = set(pool.worker_pids())
  t0 = time.monotonic()
  values, stats = pool.map([sqrt(4.0), hang(), sqrt(16.0), sqrt(25.0)])
  wall = time.monotonic() - t0
  assert values == [2.0, 0.0, 4.0, 5.0]
  assert stats.timed_out == 1 and stats.ok == 3
  assert TIMEOUT_S <= stats.max_item_s < TIMEOUT_S + MARGIN_S
  assert wall < TIMEOUT_S + MARGIN_S
  assert len(pids - set(pool.worker_pids())) == 1  # exactly the hung worker was replaced
  values, stats = pool.map([sqrt(36.0), sqrt(49.0)])
  assert values == [6.0, 7.0] and stats.ok == 2


def test_crash_is_replaced(pool):
  pids = set(pool.worker_pids())
  values, stats = pool.map([crash(), sqrt(1.0), crash(), sqrt(64.0)])
  assert values == [0.0, 1.0, 0.0, 8.0]
  assert stats.crashed == 2 and stats.ok == 2
  assert pids - set(pool.worker_pids())  # at least one worker was replaced
  assert pool.map([sqrt(81.0)])[0] == [9.0]


def test_every_item_may_hang(pool):
  # 4 hangs on 2 workers: two rounds of one deadline each, plus replacing the first two workers
  # (a spawn start, 0.3 s idle, several seconds on a loaded machine; not billed to the items).
  t0 = time.monotonic()
  values, stats = pool.map([hang() for _ in range(4)])
  assert values == [0.0] * 4 and stats.timed_out == 4
  assert stats.max_item_s < TIMEOUT_S + MARGIN_S
  assert time.monotonic() - t0 < 2 * TIMEOUT_S + 2 * MARGIN_S + 10.0
  assert pool.map([sqrt(100.0)])[0] == [10.0]


def test_batch_deadline_bounds_the_call():
  cfg = PoolConfig(num_workers=2, timeout_s=30.0, batch_timeout_s=1.0,
                   start_method=StartMethod.SPAWN)
  with DeadlinePool("operator:call", cfg, default=-1.0) as p:
    p.start()
    t0 = time.monotonic()
    values, stats = p.map([sqrt(4.0)] + [hang() for _ in range(5)])
    assert time.monotonic() - t0 < 1.0 + MARGIN_S
    assert values == [2.0] + [-1.0] * 5
    assert stats.unfinished == 5 and stats.ok == 1
    # Both workers were killed; the replacements' start-up would count against the next call's
    # 1 s, so wait for them here (a trainer's next step comes much later).
    p.start()
    assert p.map([sqrt(9.0)])[0] == [3.0]


def test_close_reaps_workers():
  p = DeadlinePool("operator:call", PoolConfig(num_workers=1, start_method=StartMethod.SPAWN))
  p.start()
  pids = p.worker_pids()
  assert len(pids) == 1
  p.close()
  assert p.worker_pids() == []
  for pid in pids:  # our direct children under spawn: reaped means gone, not a zombie
    assert not pathlib.Path(f"/proc/{pid}").exists() or _state(pid) != "Z"
  assert p.map([sqrt(4.0)])[0] == [2.0]  # a closed pool restarts on demand
  p.close()


def _state(pid: int) -> str:
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except (FileNotFoundError, ProcessLookupError, IndexError):
    return "gone"


_EXIT_SCRIPT = textwrap.dedent("""
    import functools, multiprocessing, operator, os, time
    from darling_jax.rewards.deadline_pool import DeadlinePool, PoolConfig

    def main():
      pool = DeadlinePool("operator:call", PoolConfig(num_workers=2, timeout_s=0.5))
      values, _ = pool.map([functools.partial(time.sleep, 60), functools.partial(abs, -3)])
      assert values == [0.0, 3], values
      forkserver = multiprocessing.forkserver._forkserver._forkserver_pid
      print(" ".join(str(p) for p in pool.worker_pids() + [forkserver]), flush=True)
      # Exit without close(): the atexit hook must stop and reap everything.

    if __name__ == "__main__":
      main()
""")


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="needs /proc to inspect processes")
def test_exit_leaves_no_processes(tmp_path):
  script = tmp_path / "pool_exit.py"
  script.write_text(_EXIT_SCRIPT)
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  pids = [int(p) for p in out.stdout.split()]
  assert len(pids) == 3
  deadline = time.monotonic() + 5.0
  while time.monotonic() < deadline and any(_state(p) != "gone" for p in pids):
    time.sleep(0.1)
  assert [_state(p) for p in pids] == ["gone"] * 3


@pytest.mark.parametrize("field, value", [
    ("num_workers", 0), ("timeout_s", 0.0), ("timeout_s", math.inf), ("batch_timeout_s", -1.0),
    ("memory_limit_mb", 10), ("start_method", "fork"),
])
def test_config_validation_names_the_field(field, value):
  with pytest.raises(InputError) as e:
    PoolConfig(**{field: value})
  assert e.value.where == f"PoolConfig.{field}"


def test_initializer_failure_is_loud():
  p = DeadlinePool("operator:call", PoolConfig(num_workers=1, start_method=StartMethod.SPAWN),
                   initializer="darling_jax.no_such_module:f")
  with pytest.raises(RuntimeError, match="failed to start"):
    p.start()
  p.close()


def test_memory_limit_turns_runaway_allocation_into_error(pool):
  # bytearray(4 GB) under a 512 MB cap: MemoryError in the worker, an error, not a swap storm.
  pids = pool.worker_pids()
  values, stats = pool.map([functools.partial(bytearray, 4 * 2**30), sqrt(4.0)])
  assert values == [0.0, 2.0] and stats.errors == 1
  assert pool.worker_pids() == pids


def test_usable_from_a_thread(pool):
  import threading
  out = {}
  thread = threading.Thread(target=lambda: out.update(r=pool.map([sqrt(4.0), hang()])[0]))
  thread.start()
  thread.join(timeout=30)
  assert out["r"] == [2.0, 0.0]

