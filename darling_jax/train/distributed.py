"""Multi-process start-up: `jax.distributed.initialize` when launched as several processes.

Set DARLING_COORDINATOR=host:port, DARLING_NUM_PROCESSES and DARLING_PROCESS_ID (or run under a
launcher JAX detects itself: Cloud TPU, SLURM, Open MPI). On CPU the collectives go over gloo.
"""

from __future__ import annotations

import os

import jax


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
