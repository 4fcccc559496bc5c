"""Random initialisation of a Decoder straight into its shardings.

Shapes come from `jax.eval_shape`; the init runs under one `jax.jit` whose out_shardings are the
params' shardings, so no device ever holds a replica it does not keep (and eager op-by-op random
init, which compiles one tiny program per parameter shape, is avoided).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.sharding.mesh import single_device_mesh
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules, state_shardings


def init_decoder(config: DecoderConfig, seed: int = 0, *, param_dtype=jnp.float32,
                 dtype=jnp.float32, mesh: Mesh | None = None,
                 rules: LogicalRules = DEFAULT_RULES, remat: bool = False) -> Decoder:
  mesh = mesh or single_device_mesh()

  def build(key):
    return nnx.split(Decoder(config, rngs=nnx.Rngs(params=key), param_dtype=param_dtype,
                             dtype=dtype, remat=remat))[1]

  graphdef, abstract = nnx.split(nnx.eval_shape(
      lambda: Decoder(config, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype,
                      remat=remat)))
  shardings = state_shardings(abstract, mesh, rules)
  params = jax.jit(build, out_shardings=shardings)(jax.random.key(seed))
  return nnx.merge(graphdef, params)
