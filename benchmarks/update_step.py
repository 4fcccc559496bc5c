"""MFU of the compiled DARLING update step, and its physical floor.

  python benchmarks/update_step.py --shape qwen3-0.6b --batch 64 --seq 1024 --dtype bfloat16
  python benchmarks/update_step.py --shape small --batch 16 --seq 256        # CPU
  python benchmarks/update_step.py --shape small --batch 16 --seq 544 --prompt 32 \
      --length-distribution long-tail                                       # layouts, CPU

FLOPs per step (forward + backward = 3 x forward), per sequence token:
  6 * (non-embedding params)  +  12 * L * T * H * N / 2 (causal attention, q.k and p.v)
  +  6 * D * V (LM head)
Peak: --peak-tflops, or measured in the same run as a large matmul of the chosen dtype.
MFU = FLOPs / step time / peak. Compile time is excluded (reported apart).

--length-distribution long-tail: response lengths ~ geometric with mean N / 6, capped at N
(N = --seq - --prompt), prompt lengths uniform in [P / 2, P]; the same batch runs under the
padded, bucketed and packed layouts (update.layout), each compiled once, and the result is real
response tokens per second (host packing time included). Physical floor: the FLOPs the real
tokens need, sum over sequences of (Lp + Lr) * 6 * non-embed + Lr * 6 * D * V (the LM head only
where a response token is predicted) + 6 * L * H * N_heads * (Lp + Lr)^2 (causal attention),
over the measured peak: `floor_tok_s` = real response tokens / (those FLOPs / peak).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.decoder_init import init_decoder
from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.fusion import FusionConfig
from darling_jax.rl.packing import BatchPacker
from darling_jax.rl.state import TrainState, UpdateBatch
from darling_jax.rl.update import UpdateConfig, make_update_step

SHAPES = {
    "qwen3-0.6b": DecoderConfig.qwen3_0p6b,
    "small": lambda: DecoderConfig(family=Family.QWEN3, vocab_size=8192, hidden_size=256,
                                   intermediate_size=768, num_layers=4, num_heads=4,
                                   num_kv_heads=2, head_dim=64, qk_norm=True,
                                   tie_word_embeddings=True),
}


def step_flops(cfg: DecoderConfig, sequences: int, seq: int) -> float:
  d, f, L, v, h, n, k = (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size,
                         cfg.head_dim, cfg.num_heads, cfg.num_kv_heads)
  non_embed = L * (d * h * (2 * n + 2 * k) + 3 * d * f)
  tokens = sequences * seq
  attn = 12 * L * seq * h * n / 2  # per token, causal half
  return tokens * (6 * non_embed + attn + 6 * d * v)


def real_flops(cfg: DecoderConfig, prompt_len: np.ndarray, response_len: np.ndarray) -> float:
  """The module docstring's floor: FLOPs the real tokens of every sequence need."""
  d, f, L, v, h, n, k = (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size,
                         cfg.head_dim, cfg.num_heads, cfg.num_kv_heads)
  non_embed = L * (d * h * (2 * n + 2 * k) + 3 * d * f)
  lr = response_len.astype(np.float64)
  total = np.broadcast_to(prompt_len[:, None], lr.shape) + lr
  return float(np.sum(total * 6 * non_embed + lr * 6 * d * v + 6 * L * h * n * total**2))


def long_tail_batch(rng, vocab: int, B: int, G: int, P: int, N: int) -> UpdateBatch:
  """Left-padded prompts of [P/2, P] tokens, responses of geometric lengths (mean N/6) <= N."""
  lp = rng.integers(max(1, P // 2), P + 1, B)
  lr = np.minimum(rng.geometric(6.0 / N, (B, G)), N)
  prompt_mask = np.arange(P)[None] >= (P - lp)[:, None]
  response_mask = np.arange(N)[None, None] < lr[..., None]
  return UpdateBatch(
      prompt_ids=jnp.asarray(rng.integers(0, vocab, (B, P)) * prompt_mask, jnp.int32),
      prompt_mask=jnp.asarray(prompt_mask),
      response_ids=jnp.asarray(rng.integers(0, vocab, (B, G, N)), jnp.int32),
      response_mask=jnp.asarray(response_mask),
      old_logprobs=jnp.full((B, G, N), -5.0), quality=jnp.asarray(rng.integers(0, 2, (B, G)),
                                                                  jnp.float32),
      equiv_probs=jnp.asarray(rng.uniform(size=(B, G, G)), jnp.float32))


def compare_layouts(args, cfg, graphdef, params, batch, dt) -> None:
  """Real response tokens / s of each layout on the same batch (module docstring)."""
  lp = np.asarray(batch.prompt_mask).sum(-1)
  lr = np.asarray(batch.response_mask).sum(-1)
  result: dict = {"date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind,
                  "shape": args.shape, "params": cfg.num_params, "sequences": int(lr.size),
                  "prompt": batch.prompt_ids.shape[1], "max_new": batch.response_ids.shape[2],
                  "mean_response": round(float(lr.mean()), 1), "max_response": int(lr.max()),
                  "response_tokens": int(lr.sum()), "dtype": args.dtype}
  tx = optax.adamw(1e-6, weight_decay=0.01)
  layouts = ("padded", "bucketed", "packed")
  runs = {}
  for layout in layouts:
    ucfg = UpdateConfig(layout=layout, micro_batch_prompts=args.micro,
                        max_tokens_per_micro_batch=args.max_tokens,
                        reward=RewardConfig(fusion=FusionConfig()))
    packer = BatchPacker(ucfg, max_positions=cfg.max_position_embeddings)
    update = jax.jit(make_update_step(graphdef, tx, ucfg), donate_argnums=0)
    state = TrainState(step=jnp.int32(0), params=jax.tree.map(jnp.copy, params),
                       opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    t = time.perf_counter()
    # Two warm-up calls: the second sees the first's output layouts (committed params) and
    # compiles once more (the loop avoids that by pinning in/out shardings).
    for _ in range(2):
      packed, facts = packer(batch)
      state, m = update(state, packed)
      jax.block_until_ready(m)
    result[f"{layout}_compile_s"] = round(time.perf_counter() - t, 1)
    runs[layout] = [packer, update, state, facts, []]
  # Timed calls round-robin over the layouts, so load from other processes hits all alike.
  for _ in range(args.repeats):
    for layout in layouts:
      packer, update, state, _, times = runs[layout]
      t = time.perf_counter()
      packed, facts = packer(batch)
      state, m = update(state, packed)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
      assert int(m["response_tokens"]) == result["response_tokens"]
      runs[layout][2:4] = [state, facts]
  for layout in layouts:
    facts, step_s = runs[layout][3], min(runs[layout][4])
    result[f"{layout}_tok_s"] = round(result["response_tokens"] / step_s, 1)
    result[f"{layout}_step_s"] = round(step_s, 3)
    result[f"{layout}_row_len"] = facts["row_len"]
    if "fill" in facts:
      result[f"{layout}_fill"] = round(facts["fill"], 3)
    print(f"{layout}: {step_s:.3f} s/step, {result[f'{layout}_tok_s']} response tok/s, "
          f"facts {facts}", flush=True)
  peak = args.peak_tflops or measured_peak_tflops(dt, 4096 if jax.devices()[0].platform != "cpu"
                                                  else 1024)
  floor_s = real_flops(cfg, lp, lr) / (peak * 1e12)
  result.update(peak_tflops=round(peak, 3), floor_tok_s=round(result["response_tokens"] / floor_s,
                                                                1),
                packed_over_padded=round(result["packed_tok_s"] / result["padded_tok_s"], 2),
                bucketed_over_padded=round(result["bucketed_tok_s"] / result["padded_tok_s"], 2))
  print(json.dumps(result))


def measured_peak_tflops(dtype, size: int) -> float:
  a = jnp.ones((size, size), dtype)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, a).block_until_ready()
  reps = 5
  t = time.perf_counter()
  for _ in range(reps):
    out = mm(a, a)
  out.block_until_ready()
  return 2 * size**3 * reps / (time.perf_counter() - t) / 1e12


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--shape", choices=sorted(SHAPES), default="small")
  p.add_argument("--batch", type=int, default=16, help="sequences per step (B * G)")
  p.add_argument("--seq", type=int, default=256, help="tokens per sequence (prompt + response)")
  p.add_argument("--prompt", type=int, default=0, help="prompt part of --seq (default seq/4)")
  p.add_argument("--group", type=int, default=8, help="G: sequences per prompt")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--micro", type=int, default=0, help="prompts per micro-batch (0: all)")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--peak-tflops", type=float, default=0.0)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--length-distribution", choices=["full", "long-tail"], default="full",
                 help="full: every response N tokens (MFU); long-tail: compare the layouts")
  p.add_argument("--max-tokens", type=int, default=0,
                 help="packed: update.max_tokens_per_micro_batch (0: one micro-batch)")
  args = p.parse_args()

  cfg = SHAPES[args.shape]()
  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  model = init_decoder(cfg, 0, param_dtype=jnp.float32, dtype=dt, remat=args.remat)
  graphdef, params = nnx.split(model)
  G = args.group
  B = args.batch // G
  P = args.prompt or args.seq // 4
  N = args.seq - P
  rng = np.random.default_rng(0)
  if args.length_distribution == "long-tail":
    compare_layouts(args, cfg, graphdef, params, long_tail_batch(rng, cfg.vocab_size, B, G, P, N),
                    dt)
    return
  batch = UpdateBatch(
      prompt_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (B, P)), jnp.int32),
      prompt_mask=jnp.ones((B, P), bool),
      response_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (B, G, N)), jnp.int32),
      response_mask=jnp.ones((B, G, N), bool),
      old_logprobs=jnp.full((B, G, N), -5.0), quality=jnp.asarray(rng.integers(0, 2, (B, G)),
                                                                  jnp.float32),
      equiv_probs=jnp.asarray(rng.uniform(size=(B, G, G)), jnp.float32))
  tx = optax.adamw(1e-6, weight_decay=0.01)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  update = jax.jit(make_update_step(graphdef, tx, UpdateConfig(
      micro_batch_prompts=args.micro, reward=RewardConfig(fusion=FusionConfig()))),
      donate_argnums=0)
  t = time.perf_counter()
  state, m = update(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    state, m = update(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = min(times)
  flops = step_flops(cfg, B * G, args.seq)
  peak = args.peak_tflops or measured_peak_tflops(dt, 4096 if jax.devices()[0].platform != "cpu"
                                                  else 1024)
  result = {
      "date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform, "host": platform.processor() or platform.machine(),
      "shape": args.shape, "params": cfg.num_params, "sequences": B * G, "seq": args.seq,
      "dtype": args.dtype, "remat": args.remat, "compile_s": round(compile_s, 1),
      "step_s": round(step_s, 4), "tflop_per_step": round(flops / 1e12, 3),
      "achieved_tflops": round(flops / step_s / 1e12, 3), "peak_tflops": round(peak, 3),
      "mfu": round(flops / step_s / 1e12 / peak, 4),
  }
  print(json.dumps(result))
  print(f"| {result['date']} | {result['device']} | {args.shape} | {args.dtype} | {B * G} x "
        f"{args.seq} | {step_s:.3f} s | {result['achieved_tflops']} | {result['peak_tflops']} | "
        f"{100 * result['mfu']:.1f}% |")


if __name__ == "__main__":
  main()
