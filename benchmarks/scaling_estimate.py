"""The paper's two recipes on Cloud TPU slices and GPU hosts: per-device memory (from `plan`) and an
ESTIMATED step time. Nothing here is measured on those chips; the assumptions are printed with it.

Step time = rollout (decode) + update, assuming
  decode at DECODE_BW_EFF of HBM bandwidth: per token step every device reads its weights (tensor
  parallel over `tensor`, no FSDP while sampling) and, on average, half its final KV cache;
  update at UPDATE_MFU of bf16 peak: 6 x params x tokens + causal attention FLOPs.
Verifier / classifier / reference costs are left out (the paper runs them off the critical path).

  python benchmarks/scaling_estimate.py > /tmp/scaling.md
"""

from __future__ import annotations

import dataclasses
import pathlib

from darling_jax.sharding.mesh import MeshConfig
from darling_jax.train.config import load_config_file
from darling_jax.train.plan import make_plan, resolve_policy_config

DECODE_BW_EFF = 0.5  # the sampler's goal on H100 (>= 50% of the bandwidth floor), unmeasured
UPDATE_MFU = 0.40  # typical of well-sharded JAX training; the update's goal is 45%, unmeasured

# name: (HBM GiB, bf16 dense TFLOP/s, HBM TB/s) from the vendors' public spec sheets
CHIPS = {
    "TPU v5e": (16, 197, 0.819),
    "TPU v5p": (95, 459, 2.765),
    "TPU v6e": (32, 918, 1.640),
    "H100 SXM": (80, 989, 3.35),
    "H200": (141, 989, 4.8),
}
RECIPES = {  # config, chip counts to try, mesh
    "qwen3_4b_math.py": (64, MeshConfig(data=1, fsdp=-1, tensor=1)),
    "llama31_8b_wildchat.py": (32, MeshConfig(data=1, fsdp=-1, tensor=1)),
}


def estimate(config, chips: int, chip: str) -> tuple[str, str]:
  hbm, tflops, tbs = CHIPS[chip]
  plan = make_plan(config, chips, int(hbm * 2**30))
  cfg = resolve_policy_config(config)
  weight_bytes = cfg.num_params * 2  # bf16 weights while sampling
  T = config.sampler.max_new_tokens
  decode_step = (weight_bytes + plan.terms["kv_cache"] / 2) / (tbs * 1e12 * DECODE_BW_EFF)
  rollout_s = T * decode_step
  tokens = config.data.batch_size * config.sampler.num_samples * (
      config.data.max_prompt_tokens + T)
  seq = config.data.max_prompt_tokens + T
  attn = 6 * cfg.num_layers * seq * cfg.head_dim * cfg.num_heads  # causal fwd+bwd per token
  flops = tokens * (6 * cfg.num_params + attn)
  update_s = flops / (chips * tflops * 1e12 * UPDATE_MFU)
  mem = f"{plan.total / 2**30:.1f} / {hbm} GiB" + ("" if plan.fits else " (does not fit)")
  return mem, f"{(rollout_s + update_s) / 60:.1f} min ({rollout_s:.0f} s + {update_s:.0f} s)"


def main() -> None:
  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  print("| recipe | chips | mesh | per-device memory (plan) | est. step (rollout + update) |")
  print("|---|---|---|---|---|")
  for name, (chips, mesh) in RECIPES.items():
    config = dataclasses.replace(load_config_file(configs / name), mesh=mesh)
    for chip in CHIPS:
      mem, step = estimate(config, chips, chip)
      sizes = mesh.resolve(chips)
      print(f"| {name} | {chips} x {chip} | data {sizes[0]}, fsdp {sizes[1]}, tensor {sizes[2]} | "
            f"{mem} | {step} |")
  print(f"\nAssumptions: decode at {DECODE_BW_EFF:.0%} of HBM bandwidth, update at "
        f"{UPDATE_MFU:.0%} MFU (bf16); both unmeasured on these chips.")


if __name__ == "__main__":
  main()
