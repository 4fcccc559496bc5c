"""XLA temporary bytes of one layer's attention, forward + backward: einsum vs blockwise.

Compiles (does not run) `grad(sum(attention(q, k, v) * w))` wrt q, k, v for a Qwen3-4B layer (32
query heads, 8 kv heads, head dim 128), batch 1, bfloat16, causal, at T = 2k, 8k, 16k, and reads
`compiled.memory_analysis().temp_size_in_bytes` (what XLA allocates beyond arguments and outputs).

Physical floor: arguments q, k, v and outputs dq, dk, dv are not temporaries; any implementation
must still hold the output o and its cotangent dO ([T, N, H] bf16 each) and one float32 softmax
statistic per query and head (the logsumexp), i.e. temp floor = 2 * T*N*H*2 + T*N*4 bytes; the
script prints each backend's temporaries as a multiple of it.

  python benchmarks/attention_memory.py [--T 2048 8192 16384]

Last stdout line: one JSON object with T, einsum/blockwise temp bytes, the floor and the ratios.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from darling_jax.models.attention import attention

N, K, H = 32, 8, 128  # Qwen3-4B


def temp_bytes(impl: str, T: int, block: int) -> int:
  q = jax.ShapeDtypeStruct((1, T, N, H), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, T, K, H), jnp.bfloat16)

  def loss(q, k, v):
    o = attention(q, k, v, causal=True, impl=impl, block_q=block, block_k=block)
    # A weighted sum, so the cotangent dO is a real [T, N, H] array (as in a model).
    w = jnp.cos(jnp.arange(H, dtype=jnp.float32))
    return jnp.sum(o.astype(jnp.float32) * w)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 16384])
  ap.add_argument("--block", type=int, default=512, help="blockwise block_q = block_k")
  args = ap.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; layer N={N} K={K} H={H}, "
        f"batch 1, bfloat16, causal, forward + backward (compile only)")
  out = {"T": [], "einsum_temp_bytes": [], "blockwise_temp_bytes": [], "floor_temp_bytes": [],
         "einsum_over_floor": [], "blockwise_over_floor": [], "einsum_over_blockwise": [],
         "block": args.block, "N": N, "K": K, "H": H, "dtype": "bfloat16"}
  for T in args.T:
    t0 = time.time()
    e, b = temp_bytes("einsum", T, args.block), temp_bytes("blockwise", T, args.block)
    floor = 2 * T * N * H * 2 + T * N * 4
    out["T"].append(T)
    out["einsum_temp_bytes"].append(e)
    out["blockwise_temp_bytes"].append(b)
    out["floor_temp_bytes"].append(floor)
    out["einsum_over_floor"].append(round(e / floor, 2))
    out["blockwise_over_floor"].append(round(b / floor, 2))
    out["einsum_over_blockwise"].append(round(e / b, 1))
    print(f"T={T:6d}: einsum {e / 2**20:10.1f} MiB ({e / floor:7.1f}x floor), blockwise "
          f"{b / 2**20:8.1f} MiB ({b / floor:5.2f}x floor), floor {floor / 2**20:7.1f} MiB, "
          f"einsum/blockwise {e / b:6.1f}x  [compiled in {time.time() - t0:.1f} s]")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
