"""Rollout throughput: our compiled sampler vs transformers `generate` (static and dynamic cache),
same weights, batch and lengths, in one run; plus the memory-bandwidth floor.

Every rollout runs exactly --new-tokens tokens (no stop ids; transformers gets min_new_tokens) with
plain T = 1 sampling, --num-samples G rollouts per prompt (transformers: num_return_sequences, which
prefills each prompt G times; ours prefills it once and shares the cache). Tokens/s counts generated
tokens over wall time including prefill; our compile time is reported separately.

Bandwidth floor: a decode step must read every weight once and the valid KV cache (the prompt part
once per prompt with prefix sharing, plus each row's generated part), so
  floor time = sum over steps (weight bytes + prompt KV bytes + decoded KV bytes) / bandwidth,
with the bandwidth measured here as a jitted elementwise copy (bytes read + written per second).

  python benchmarks/sampler_throughput.py --model tiny --batch 16 --prompt-len 32 --new-tokens 64
  python benchmarks/sampler_throughput.py --model qwen3-0.6b-random --device gpu --batch 256 \
      --prompt-len 128 --new-tokens 256 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a checkout


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", choices=("tiny", "smollm2", "qwen3-0.6b-random"), default="tiny")
  p.add_argument("--batch", type=int, default=16, help="rollouts in total (prompts x samples)")
  p.add_argument("--num-samples", type=int, default=8, help="G: rollouts per prompt")
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="weights, compute and KV cache (default: float32 on cpu, bfloat16 on gpu)")
  p.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best is reported)")
  p.add_argument("--hf-repeats", type=int, default=1, help="timed runs of each transformers mode")
  p.add_argument("--skip-hf", action="store_true", help="only ours and the floor")
  p.add_argument("--append", type=pathlib.Path, default=None, help="append the table row here")
  args = p.parse_args(argv)
  if args.batch % args.num_samples:
    p.error(f"--batch {args.batch} is not a multiple of --num-samples {args.num_samples}")
  args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
  return args


def build_model(name: str, dtype):
  from flax import nnx

  from darling_jax.models.decoder import Decoder
  from darling_jax.models.decoder_config import DecoderConfig
  from darling_jax.models.loading import load_model, packaged_smollm2_gguf

  if name == "smollm2":
    return load_model(packaged_smollm2_gguf(), dtype=dtype)[0]
  cfg = DecoderConfig.tiny(vocab_size=512) if name == "tiny" else DecoderConfig.qwen3_0p6b()
  # One compiled init instead of an eager op (and compile) per parameter.
  return nnx.jit(lambda: Decoder(cfg, rngs=nnx.Rngs(0), param_dtype=dtype, dtype=dtype))()


def measure_bandwidth(nbytes: int) -> float:
  """Bytes read + written per second by a jitted elementwise op over an nbytes float32 array."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(lambda a: a + 1.0)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * x.nbytes / best


def floor_seconds(model, batch: int, g: int, prompt_len: int, new: int, cache_bytes: int,
                  bandwidth: float) -> tuple[float, int]:
  """(seconds, weight bytes) that reading the weights and the valid KV cache every step takes."""
  import jax
  from flax import nnx

  cfg = model.config
  params = nnx.split(model)[1]
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  if not cfg.tie_word_embeddings:  # the input embedding is gathered (R rows), not read whole
    weight_bytes -= model.embed[...].nbytes
  per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cache_bytes
  prompts = batch // g
  total = sum(weight_bytes + per_slot * (prompts * prompt_len + batch * t) for t in range(new))
  return total / bandwidth, weight_bytes


def time_ours(model, prompt_ids, g: int, new: int, dtype_name: str, repeats: int):
  import jax
  import numpy as np
  from flax import nnx

  from darling_jax.sampling.config import SamplerConfig
  from darling_jax.sampling.sampler import sample

  cfg = SamplerConfig(max_new_tokens=new, num_samples=g, cache_dtype=dtype_name)
  graphdef, params = nnx.split(model)
  mask = np.ones(prompt_ids.shape, bool)
  t = time.perf_counter()
  out = sample(graphdef, params, prompt_ids, mask, jax.random.key(0), cfg)
  jax.block_until_ready(out)
  first = time.perf_counter() - t
  best = float("inf")
  for i in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(sample(graphdef, params, prompt_ids, mask, jax.random.key(i + 1), cfg))
    best = min(best, time.perf_counter() - t)
  assert int(np.asarray(out.lengths).min()) == new
  return best, first - best


def time_transformers(folder, prompt_ids, g: int, new: int, dtype_name: str, device: str,
                      repeats: int) -> dict[str, float]:
  import torch
  import transformers

  dev = "cuda" if device == "gpu" else "cpu"
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(dev).eval()
  ids = torch.tensor(prompt_ids, dtype=torch.long, device=dev)
  kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0, num_return_sequences=g, max_new_tokens=new, min_new_tokens=new,
            pad_token_id=0)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  out = {}
  for mode in ("static", "dynamic"):
    extra = {"cache_implementation": "static"} if mode == "static" else {}
    with torch.no_grad():
      hf.generate(ids, **{**kw, "max_new_tokens": min(new, 4), "min_new_tokens": 0}, **extra)
      best = float("inf")
      for _ in range(repeats):
        sync()
        t = time.perf_counter()
        res = hf.generate(ids, **kw, **extra)
        sync()
        best = min(best, time.perf_counter() - t)
    assert res.shape == (ids.shape[0] * g, ids.shape[1] + new), res.shape
    out[mode] = best
  return out


def device_name(device: str) -> str:
  import jax

  d = jax.devices()[0]
  if device == "gpu":
    return d.device_kind
  return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} cores"


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu" if args.device == "cpu" else "cuda")
  import jax.numpy as jnp
  import numpy as np

  from darling_jax.models.hf_decoder import export_hf

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  model = build_model(args.model, dtype)
  g, new, plen = args.num_samples, args.new_tokens, args.prompt_len
  prompts = args.batch // g
  rng = np.random.default_rng(0)
  prompt_ids = rng.integers(3, model.config.vocab_size, (prompts, plen)).astype(np.int32)

  ours, compile_s = time_ours(model, prompt_ids, g, new, args.dtype, args.repeats)
  bandwidth = measure_bandwidth(2**31 if args.device == "gpu" else 2**28)
  floor_s, weight_bytes = floor_seconds(model, args.batch, g, plen, new,
                                        np.dtype(dtype).itemsize, bandwidth)
  hf = {"static": float("nan"), "dynamic": float("nan")}
  if not args.skip_hf:
    with tempfile.TemporaryDirectory() as tmp:
      export_hf(model, pathlib.Path(tmp) / "model")
      hf = time_transformers(pathlib.Path(tmp) / "model", prompt_ids, g, new, args.dtype,
                             args.device, args.hf_repeats)

  tokens = args.batch * new
  tps = lambda s: tokens / s  # noqa: E731
  row = (f"| {datetime.date.today()} | {device_name(args.device)} | {args.model} | {args.dtype} "
         f"| {prompts}x{g}={args.batch} | {plen} | {new} | {tps(ours):,.0f} "
         f"| {tps(hf['static']):,.0f} | {tps(hf['dynamic']):,.0f} | {tps(floor_s):,.0f} "
         f"| {100 * floor_s / ours:.1f}% | {hf['static'] / ours:.1f}x | {compile_s:.1f} "
         f"| {bandwidth / 1e9:.0f} | {weight_bytes / 1e6:.1f} |")
  header = ("| date | device | model | dtype | prompts x G = rollouts | prompt | new | ours tok/s "
            "| HF static tok/s | HF dynamic tok/s | floor tok/s | ours / floor | ours / HF static "
            "| our compile s | measured GB/s | weight MB |\n" + "|---" * 16 + "|")
  print(header)
  print(row)
  print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
  if args.append:
    with open(args.append, "a", encoding="utf-8") as f:
      f.write(row + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
