"""`darling-jax classifier train|eval`: fine-tune and evaluate the equivalence classifier.

  darling-jax classifier train --pairs FILE.jsonl --out DIR [--init PATH] [--recipe NAME]
      [--threshold TAU] [--answer-max-words N | --answer-max-tokens N] [--max-length N]
  darling-jax classifier eval --checkpoint DIR --pairs FILE.jsonl [--threshold TAU]
      [--predictions OUT.jsonl] [--similar-label 1] [--symmetric] [--answer-max-words N |
      --answer-max-tokens N]

Pairs files are jsonl with fields generation_0, generation_1 (strings) and similar (0/1). Both
commands print one JSON object on their last line (eval: accuracy at the configured threshold,
auc, threshold = the accuracy-maximising threshold on these pairs, and more).

`eval --checkpoint` also takes a plain HF *ForSequenceClassification folder (BERT, ModernBERT,
DeBERTa-v2/v3, Qwen3, Qwen2, Llama) with a 2-way head: P(similar) = softmax(logits)[L] with L =
--similar-label (default 1, NoveltyBench's convention). NoveltyBench-comparable numbers with its
public yimingzhang/deberta-v3-large-generation-similarity: `--threshold 0.102
--answer-max-tokens 128`. --predictions writes one JSON row per pair (its fields plus p_similar).
Answer length (default: the reference's (max_length - 3) // 2 whitespace words per answer in
cross mode): see darling_jax/diversity/answer_length.py.
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
  tr.add_argument("--threshold", type=float, default=None,
                  help="save this tau in [0, 1] (default: the recipe's, or its out-of-fold pick)")
  _length_args(tr)
  tr.add_argument("--max-length", type=int, default=None,
                  help="pair row length in tokens (default: encoder positions, at most 2048)")
  tr.set_defaults(run=run_train)
  ev = sub.add_parser("eval", help="accuracy / AUC / best threshold on labelled pairs")
  ev.add_argument("--checkpoint", required=True, help="folder written by `classifier train`, or "
                  "a HF *ForSequenceClassification folder with a 2-way head")
  ev.add_argument("--pairs", required=True, help="jsonl with generation_0, generation_1, similar")
  ev.add_argument("--threshold", type=float, default=None,
                  help="override the classifier's configured threshold")
  ev.add_argument("--micro-batch", type=int, default=64, help="rows per encoder call")
  ev.add_argument("--predictions", default=None,
                  help="write one JSON row per pair (its fields plus p_similar) here")
  ev.add_argument("--similar-label", type=int, default=None, choices=(0, 1),
                  help="head output meaning 'similar' (default: the folder's, else 1)")
  ev.add_argument("--symmetric", action="store_true",
                  help="cross mode: average both orders of each pair (default: one order)")
  _length_args(ev)
  ev.set_defaults(run=run_eval)


def _length_args(parser) -> None:
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--answer-max-words", type=int, default=None,
                     help="cut each answer to this many whitespace words")
  group.add_argument("--answer-max-tokens", type=int, default=None,
                     help="cut each answer to this many tokens on its own")


def run_train(args: argparse.Namespace) -> int:
  import dataclasses

  from darling_jax.diversity.classifier_eval import read_pairs
  from darling_jax.diversity.classifier_recipes import get_recipe
  from darling_jax.diversity.classifier_train import train
  from darling_jax.diversity.pair_scoring import ScoringShapes

  recipe = get_recipe(args.recipe)
  overrides = {k: v for k, v in (("seed", args.seed), ("steps", args.steps)) if v is not None}
  if "steps" in overrides:
    # At least one step after warm-up: optax's cosine part needs a positive length.
    overrides["warmup_steps"] = min(recipe.warmup_steps, max(overrides["steps"] - 1, 0))
  recipe = dataclasses.replace(recipe, **overrides)
  pairs = read_pairs(args.pairs)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  fields = {k: v for k, v in (("answer_max_words", args.answer_max_words),
                              ("answer_max_tokens", args.answer_max_tokens),
                              ("max_length", args.max_length)) if v is not None}
  result = train(pairs, recipe, args.out, init=args.init,
                 shapes=ScoringShapes(micro_batch=args.micro_batch), log=log,
                 threshold=args.threshold, **fields)
  print(json.dumps(result))
  return 0


def run_eval(args: argparse.Namespace) -> int:
  import time

  import numpy as np

  from darling_jax.diversity.classifier import check_threshold
  from darling_jax.diversity.classifier_eval import read_pairs, summarize
  from darling_jax.diversity.classifier_io import load_classifier
  from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes

  if args.threshold is not None:
    check_threshold(args.threshold, "--threshold")
  pairs = read_pairs(args.pairs)
  clf, tok, _ = load_classifier(args.checkpoint, similar_label=args.similar_label)
  scorer = PairScorer(clf, tok, ScoringShapes(micro_batch=args.micro_batch),
                      symmetric=args.symmetric or None, threshold=args.threshold,
                      answer_max_words=args.answer_max_words,
                      answer_max_tokens=args.answer_max_tokens, length_source="--")
  t0 = time.time()
  probs = scorer.score_pairs([p["generation_0"] for p in pairs], [p["generation_1"] for p in pairs])
  seconds = time.time() - t0
  labels = np.asarray([p["similar"] for p in pairs])
  cut = scorer.cut
  result = {**summarize(probs, labels, scorer.threshold), "mode": clf.config.mode.value,
            "similar_label": clf.config.similar_label, "symmetric": scorer.symmetric,
            "answer_max_words": cut.words, "answer_max_tokens": cut.tokens,
            "pair_tokens": cut.pair_tokens, "score_seconds": round(seconds, 2)}
  if args.predictions:
    with open(args.predictions, "w", encoding="utf-8") as f:
      for p, prob in zip(pairs, probs):
        f.write(json.dumps({**p, "p_similar": float(prob)}, ensure_ascii=False) + "\n")
  print(json.dumps(result))
  return 0
