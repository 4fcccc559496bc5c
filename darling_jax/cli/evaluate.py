"""`darling-jax eval`: sample a model on a dataset and score it (pass@k / maj@k, or novelty)."""

from __future__ import annotations

import argparse
import dataclasses
import json


def register(subparsers, verb: str) -> None:
  from darling_jax.data.registry import dataset_names

  p = subparsers.add_parser(
      verb, help="evaluate a model on a dataset (math pass@k/maj@k, NoveltyBench distinct/utility)",
      description="Samples --num-samples completions per prompt of --dataset and writes "
                  "results.jsonl, summary.json (and pass_at_k.png for math) to --output-dir.")
  p.add_argument("--model", required=True, help="HF model folder or .gguf file")
  p.add_argument("--dataset", required=True,
                 help=f"one of {', '.join(dataset_names())}, or a .jsonl file (with "
                      "--prompt-field)")
  p.add_argument("--split", default=None, help="dataset split (default: test, else the first)")
  p.add_argument("--num-samples", type=int, default=None,
                 help="completions per prompt (default: 16 math, 10 open-ended)")
  p.add_argument("--max-new-tokens", type=int, default=1024)
  p.add_argument("--temperature", type=float, default=None,
                 help="default: 0.6 math (the paper), 1.0 open-ended")
  p.add_argument("--top-p", type=float, default=None,
                 help="default: 0.95 math (the paper), 1.0 open-ended")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch-size", type=int, default=8, help="prompts per sampler call")
  p.add_argument("--limit", type=int, default=None, help="evaluate only the first N prompts")
  p.add_argument("--max-prompt-tokens", type=int, default=1024,
                 help="longer prompts are dropped (and counted in the summary)")
  p.add_argument("--output-dir", default="eval_out")
  p.add_argument("--data-dir", default=None,
                 help="local dataset folder (default: $DARLING_DATA_DIR, else ../shared/data)")
  p.add_argument("--cache-dir", default=None,
                 help="TFDS build folder (default: $DARLING_TFDS_DIR, else "
                      "~/.cache/darling_jax/tfds)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--prompt-field", default=None, help="jsonl datasets: the prompt field (dotted)")
  p.add_argument("--answer-field", default=None, help="jsonl datasets: the gold answer field")
  p.add_argument("--extra-field", action="append", default=[], dest="extra_fields",
                 help="jsonl datasets: an extra column, 'path' or 'name=path' (repeatable)")
  p.add_argument("--quality", default=None,
                 help="quality function name (darling_jax.rewards.BUILTINS); default: the "
                      "dataset's for math, none for novelty (u_i = 1)")
  p.add_argument("--equivalence", default="exact", choices=("exact", "classifier"),
                 help="novelty pair scorer: exact (case/whitespace-insensitive equality) or "
                      "classifier (a learned pair classifier, see --classifier)")
  p.add_argument("--classifier", default=None,
                 help="classifier folder for --equivalence classifier, or 'default'")
  p.add_argument("--threshold", type=float, default=None,
                 help="novelty equivalence threshold (default: the classifier's, 0.5 for exact)")
  p.add_argument("--answer-max-words", type=int, default=None,
                 help="classifier: cut each answer to this many whitespace words")
  p.add_argument("--answer-max-tokens", type=int, default=None,
                 help="classifier: cut each answer to this many tokens (NoveltyBench: 128)")
  p.add_argument("--symmetric", action="store_true",
                 help="classifier: average both orders of each pair")
  p.add_argument("--patience", type=float, default=0.8,
                 help="novelty utility patience (NoveltyBench 0.8; 1.0: every position equal)")
  p.add_argument("--no-maj", dest="maj", action="store_false", help="skip maj@k")
  p.add_argument("--no-completions", dest="save_completions", action="store_false",
                 help="leave completions out of results.jsonl")
  p.add_argument("--skip-malformed", action="store_true",
                 help="skip (and count) malformed dataset records instead of failing")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  from darling_jax.evaluation.runner import EvalConfig, run_eval

  fields = {f.name for f in dataclasses.fields(EvalConfig)}
  values = {k: v for k, v in vars(args).items() if k in fields}
  values["extra_fields"] = tuple(values.get("extra_fields", ()))
  summary = run_eval(EvalConfig(**values))
  keys = ("dataset", "split", "prompts_evaluated", "prompts_dropped", "num_samples", "pass@k",
          "maj@k", "accuracy", "distinct", "utility", "mean_length", "tokens_per_second")
  print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
  print(f"wrote {args.output_dir}/summary.json")
  return 0
