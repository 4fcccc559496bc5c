"""`darling-jax generate`: sample completions of one prompt with the compiled rollout sampler."""

from __future__ import annotations

import argparse


def register(subparsers, verb: str) -> None:
  p = subparsers.add_parser(
      verb, help="generate completions of a prompt",
      description="Samples completions of --prompt from a HF model folder or a .gguf file.")
  p.add_argument("--model", default=None,
                 help="HF model folder or .gguf file (default: the packaged SmolLM2-135M-Instruct "
                      "GGUF)")
  p.add_argument("--prompt", required=True, help="the prompt text")
  p.add_argument("--chat", action="store_true",
                 help="wrap the prompt in the model's chat template as one user turn")
  p.add_argument("--max-new-tokens", type=int, default=128)
  p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores the filters)")
  p.add_argument("--num-samples", type=int, default=1, help="completions to sample (G)")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--min-p", type=float, default=0.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute, parameter and KV-cache dtype")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  from darling_jax.errors import InputError
  from darling_jax.models.loading import load_model, packaged_smollm2_gguf
  from darling_jax.sampling.text import generate_texts

  try:  # argv bytes that are not UTF-8 arrive as lone surrogates
    args.prompt.encode("utf-8")
  except UnicodeEncodeError as e:
    raise InputError("--prompt", f"is not valid UTF-8 text (character {e.start})") from None
  if args.max_new_tokens < 1 or args.num_samples < 1:
    raise InputError("--max-new-tokens" if args.max_new_tokens < 1 else "--num-samples",
                     "must be >= 1")
  path = args.model if args.model is not None else packaged_smollm2_gguf()
  model, tokenizer = load_model(path, dtype=args.dtype)
  [samples] = generate_texts(
      model, tokenizer, [args.prompt], num_samples=args.num_samples,
      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
      top_k=args.top_k, min_p=args.min_p, greedy=args.greedy, seed=args.seed, chat=args.chat)
  for i, text in enumerate(samples):
    if len(samples) > 1:
      print(f"--- sample {i + 1}/{len(samples)} ---")
    print(text)
  return 0
