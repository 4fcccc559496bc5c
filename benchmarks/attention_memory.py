"""XLA temporary bytes of one layer's attention, forward + backward: einsum vs blockwise.

Compiles (does not run) `grad(sum(attention(q, k, v) * w))` wrt q, k, v for a Qwen3-4B layer (32
query heads, 8 kv heads, head dim 128), batch 1, bfloat16, causal, at T = 2k, 8k, 16k, and reads
`compiled.memory_analysis().temp_size_in_bytes` (what XLA allocates beyond arguments and outputs).

Physical floor: arguments q, k, v and outputs dq, dk, dv are not temporaries; any implementation
must still hold the output o and its cotangent dO ([T, N, H] bf16 each) and one float32 softmax
statistic per query and head (the logsumexp), i.e. temp floor = 2 * T*N*H*2 + T*N*4 bytes; the
script prints each backend's temporaries as a multiple of it.

  python benchmarks/attention_memory.py [--T 2048 8192 16384]
  python benchmarks/attention_memory.py --tpu v5p:2x2x1   # + splash, TPU compiler (needs libtpu)

With --tpu, everything is compiled by the real TPU compiler for that topology (no TPU needed: see
environment.md) over a (data=2, tensor=rest) mesh, batch = one sequence per data shard, and the
numbers are per device (each holds N/tensor query heads); splash (Mosaic kernel, in shard_map)
joins einsum and blockwise.

Last stdout line: one JSON object with T, einsum/blockwise temp bytes, the floor and the ratios.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darling_jax.models.attention import attention

N, K, H = 32, 8, 128  # Qwen3-4B


def tpu_mesh(topology: str) -> Mesh:
  from jax.experimental import topologies

  devices = np.array(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
  return Mesh(devices.reshape(2, 1, -1), ("data", "fsdp", "tensor"))


def temp_bytes(impl: str, T: int, block: int, mesh: Mesh | None = None) -> int:
  B = 1 if mesh is None else mesh.shape["data"]
  sharding = None if mesh is None else NamedSharding(mesh, P("data", None, "tensor", None))
  q = jax.ShapeDtypeStruct((B, T, N, H), jnp.bfloat16, sharding=sharding)
  kv = jax.ShapeDtypeStruct((B, T, K, H), jnp.bfloat16, sharding=sharding)

  def loss(q, k, v):
    o = attention(q, k, v, causal=True, impl=impl, block_q=block, block_k=block, mesh=mesh)
    # A weighted sum, so the cotangent dO is a real [T, N, H] array (as in a model).
    w = jnp.cos(jnp.arange(H, dtype=jnp.float32))
    return jnp.sum(o.astype(jnp.float32) * w)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 16384])
  ap.add_argument("--block", type=int, default=512, help="blockwise block_q = block_k")
  ap.add_argument("--tpu", default="", help="TPU topology to compile for, e.g. v5p:2x2x1")
  args = ap.parse_args()
  mesh = tpu_mesh(args.tpu) if args.tpu else None
  impls = ["einsum", "blockwise"] + (["splash"] if mesh else [])
  n_local = N // (1 if mesh is None else mesh.shape["tensor"])  # query heads per device
  where = f"TPU compiler, {args.tpu}, per device" if mesh else f"{jax.default_backend()} compiler"
  print(f"jax {jax.__version__}, {where}; layer N={N} K={K} H={H}, one sequence per device, "
        f"bfloat16, causal, forward + backward (compile only)")
  out = {"T": [], **{f"{i}_temp_bytes": [] for i in impls}, "floor_temp_bytes": [],
         **{f"{i}_over_floor": [] for i in impls}, "einsum_over_blockwise": [],
         "block": args.block, "N": N, "K": K, "H": H, "dtype": "bfloat16",
         "compiler": args.tpu or jax.default_backend()}
  for T in args.T:
    t0 = time.time()
    temps = {i: temp_bytes(i, T, args.block, mesh) for i in impls}
    floor = 2 * T * n_local * H * 2 + T * n_local * 4
    out["T"].append(T)
    out["floor_temp_bytes"].append(floor)
    for i, b in temps.items():
      out[f"{i}_temp_bytes"].append(b)
      out[f"{i}_over_floor"].append(round(b / floor, 2))
    out["einsum_over_blockwise"].append(round(temps["einsum"] / temps["blockwise"], 1))
    cols = ", ".join(f"{i} {b / 2**20:9.1f} MiB ({b / floor:6.1f}x floor)"
                     for i, b in temps.items())
    print(f"T={T:6d}: {cols}; floor {floor / 2**20:6.1f} MiB  "
          f"[compiled in {time.time() - t0:.1f} s]")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
