"""Multi-process start-up: `jax.distributed.initialize` when launched as several processes.

Set DARLING_COORDINATOR=host:port, DARLING_NUM_PROCESSES and DARLING_PROCESS_ID (or run under a
launcher JAX detects itself: Cloud TPU, SLURM, Open MPI). On CPU the collectives go over gloo.
"""

from __future__ import annotations

import os

import jax
import numpy as np


def maybe_initialize() -> bool:
  """Initialises jax.distributed once if the environment asks for several processes."""
  coordinator = os.environ.get("DARLING_COORDINATOR")
  if coordinator:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or os.environ.get("DARLING_CPU_COLLECTIVES"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["DARLING_NUM_PROCESSES"]),
                               process_id=int(os.environ["DARLING_PROCESS_ID"]))
    return True
  if os.environ.get("DARLING_AUTO_DISTRIBUTED"):
    jax.distributed.initialize()  # TPU pods / SLURM / MPI: JAX reads the environment
    return True
  return False


def to_host(x) -> np.ndarray:
  """A (possibly multi-host sharded) array as the full numpy value, on every process."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(num_rows: int) -> slice:
  """This process's contiguous share of `num_rows` groups (its prompts of the global batch)."""
  n, p = jax.process_count(), jax.process_index()
  if num_rows % n:
    raise ValueError(f"{num_rows} rows do not split over {n} processes")
  per = num_rows // n
  return slice(p * per, (p + 1) * per)


def allgather_rows(local: np.ndarray) -> np.ndarray:
  """Concatenates every process's rows (in process order) on every process."""
  if jax.process_count() == 1:
    return np.asarray(local)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))
