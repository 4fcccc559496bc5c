"""Meshes and logical-axis sharding rules shared by every model role."""

from darling_jax.sharding.rules import (
    LogicalRules,
    logical_to_spec,
    state_shardings,
    DEFAULT_RULES,
    SAMPLING_RULES,
    CLASSIFIER_RULES,
)
from darling_jax.sharding.mesh import MeshConfig, make_mesh, single_device_mesh

__all__ = [
    "LogicalRules",
    "logical_to_spec",
    "state_shardings",
    "DEFAULT_RULES",
    "SAMPLING_RULES",
    "CLASSIFIER_RULES",
    "MeshConfig",
    "make_mesh",
    "single_device_mesh",
]
