"""One device mesh with named axes (data, fsdp, tensor) shared by policy, reference and classifier."""

from __future__ import annotations

import dataclasses
import math

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh

from darling_jax.errors import InputError

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the named mesh axes; exactly one may be -1 ("all the devices the others leave")."""

  data: int = -1  # pure data parallelism: rollouts and groups split across it
  fsdp: int = 1  # parameter/optimizer sharding (ZeRO-3 style) for training
  tensor: int = 1  # Megatron-style head/MLP sharding; keep within one host's fast interconnect

  def __post_init__(self):
    sizes = self.sizes_tuple()
    if sum(s == -1 for s in sizes) > 1:
      raise InputError("mesh", f"at most one axis may be -1, got {dict(zip(AXES, sizes))}")
    for name, s in zip(AXES, sizes):
      if s == 0 or s < -1:
        raise InputError(f"mesh.{name}", f"must be a positive size or -1, got {s}")

  def sizes_tuple(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    sizes = list(self.sizes_tuple())
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise InputError("mesh", f"{dict(zip(AXES, sizes))} does not divide {num_devices} devices")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise InputError(
          "mesh", f"{dict(zip(AXES, sizes))} uses {math.prod(sizes)} devices, {num_devices} present"
      )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
  """A Mesh over `devices` (default: all, across hosts) with axes (data, fsdp, tensor)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = config.resolve(len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # non-TPU topologies (CPU, forced host devices) have no physical layout to honour
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


def single_device_mesh(device=None) -> Mesh:
  device = jax.devices()[0] if device is None else device
  return Mesh(np.asarray([device]).reshape(1, 1, 1), AXES)
