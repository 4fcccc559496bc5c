"""`darling-jax classifier train|eval`: fine-tune and evaluate the equivalence classifier.

  darling-jax classifier train --pairs FILE.jsonl --out DIR [--init PATH] [--recipe NAME]
  darling-jax classifier eval --checkpoint DIR --pairs FILE.jsonl [--threshold TAU]

Pairs files are jsonl with fields generation_0, generation_1 (strings) and similar (0/1). Both
commands print one JSON object on their last line (eval: accuracy at the configured threshold,
auc, threshold = the accuracy-maximising threshold on these pairs, and more).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers, verb: str) -> None:
  parser = subparsers.add_parser(verb, help="train / evaluate the pair equivalence classifier",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="action", required=True)
  tr = sub.add_parser("train", help="fine-tune on human-labelled pairs; saves into --out")
  tr.add_argument("--pairs", required=True, help="jsonl with generation_0, generation_1, similar")
  tr.add_argument("--out", required=True, help="output folder (checkpoint, HF export, json)")
  tr.add_argument("--init", default=None, help="HF encoder folder (default: packaged MiniLM)")
  tr.add_argument("--recipe", default="default",
                  help="default (CPU: frozen encoder, bi mode), zeroshot (embedding-cosine "
                  "baseline), full (the paper's cross-encoder fine-tune; accelerators), bi_full")
  tr.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
  tr.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
  tr.add_argument("--micro-batch", type=int, default=64, help="rows per encoder call")
  tr.set_defaults(run=run_train)
  ev = sub.add_parser("eval", help="accuracy / AUC / best threshold on labelled pairs")
  ev.add_argument("--checkpoint", required=True, help="folder written by `classifier train`")
  ev.add_argument("--pairs", required=True, help="jsonl with generation_0, generation_1, similar")
  ev.add_argument("--threshold", type=float, default=None,
                  help="override the classifier's configured threshold")
  ev.add_argument("--micro-batch", type=int, default=64, help="rows per encoder call")
  ev.set_defaults(run=run_eval)


def run_train(args: argparse.Namespace) -> int:
  import dataclasses

  from darling_jax.diversity.classifier_eval import read_pairs
  from darling_jax.diversity.classifier_recipes import get_recipe
  from darling_jax.diversity.classifier_train import train
  from darling_jax.diversity.pair_scoring import ScoringShapes

  recipe = get_recipe(args.recipe)
  overrides = {k: v for k, v in (("seed", args.seed), ("steps", args.steps)) if v is not None}
  if "steps" in overrides:
    overrides["warmup_steps"] = min(recipe.warmup_steps, overrides["steps"])
  recipe = dataclasses.replace(recipe, **overrides)
  pairs = read_pairs(args.pairs)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  result = train(pairs, recipe, args.out, init=args.init,
                 shapes=ScoringShapes(micro_batch=args.micro_batch), log=log)
  print(json.dumps(result))
  return 0


def run_eval(args: argparse.Namespace) -> int:
  import time

  import numpy as np

  from darling_jax.diversity.classifier_eval import read_pairs, summarize
  from darling_jax.diversity.classifier_io import load_classifier
  from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes
  from darling_jax.errors import InputError

  if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
    raise InputError("--threshold", f"must be in [0, 1], got {args.threshold}")
  pairs = read_pairs(args.pairs)
  clf, tok, _ = load_classifier(args.checkpoint)
  scorer = PairScorer(clf, tok, ScoringShapes(micro_batch=args.micro_batch))
  t0 = time.time()
  probs = scorer.score_pairs([p["generation_0"] for p in pairs], [p["generation_1"] for p in pairs])
  seconds = time.time() - t0
  tau = clf.config.threshold if args.threshold is None else args.threshold
  labels = np.asarray([p["similar"] for p in pairs])
  result = {**summarize(probs, labels, tau), "mode": clf.config.mode.value,
            "score_seconds": round(seconds, 2)}
  print(json.dumps(result))
  return 0
