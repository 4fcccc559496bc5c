"""Reads a run's Orbax checkpoint as numpy, whatever mesh or process count wrote it."""

import pathlib

import jax
import numpy as np


def restore_state_leaves(workdir: pathlib.Path, step: int) -> list[np.ndarray]:
  import orbax.checkpoint as ocp

  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return [np.asarray(x) for x in jax.tree.leaves(ckptr.restore(path, target))]
