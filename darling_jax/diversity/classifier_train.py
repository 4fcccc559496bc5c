"""Fine-tuning the equivalence classifier on human-labelled pairs (fields generation_0/1, similar).

Objective (NoveltyBench / DARLING): 2-way cross-entropy with inverse-frequency class weights
w_c = n / n_c, averaged as sum_r w_{y_r} CE_r / sum_r w_{y_r}; every pair is used in both orders
(y_i, y_j) and (y_j, y_i); AdamW with linear warm-up to peak_lr then cosine to final_lr. A
stratified validation split (recipe.val_fraction, fixed seed) is carved out of the pairs file
first and never trained on. Deterministic given recipe.seed.

The recipes (classifier_recipes.py) differ in what trains:
  head: the encoder is frozen, so each answer is encoded once and each pair reduces to its K
        similarity features; the head trains on [n_pairs, K] in seconds. tau is chosen from
        out-of-fold predictions of k heads trained on k-1 folds of the training split (not on the
        validation split), so the reported validation accuracy is not tuned on itself.
  all:  every weight trains on mini-batches of rows (cross: pair rows; bi: answer windows).
  none: nothing trains; the head reads the embedding cosine alone (the zero-shot baseline).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from darling_jax.diversity import classifier_eval
from darling_jax.diversity.classifier import ClassifierConfig, PairClassifier, PairMode
from darling_jax.diversity.classifier_io import save_classifier
from darling_jax.diversity.classifier_recipes import Recipe, Trainable
from darling_jax.diversity.pair_batches import build_rows, geometric_buckets
from darling_jax.diversity.pair_scoring import (PairScorer, ScoringShapes, bi_args,
                                                bi_group_logits, cross_row_logits, device_rows)
from darling_jax.errors import InputError
from darling_jax.models import encoders

Log = Callable[[str], None]


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, val_idx): each class split in the same proportion, shuffled with `seed`."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, val = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_val = int(round(val_fraction * len(idx)))
    val.append(idx[:n_val])
    train.append(idx[n_val:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(labels: np.ndarray) -> np.ndarray:
  """Inverse-frequency weights n / n_c of the two classes (as the reference computes them)."""
  counts = np.bincount(np.asarray(labels, int), minlength=2)
  if (counts == 0).any():
    raise InputError("pairs", f"training pairs need both classes, got counts {counts.tolist()}")
  return (counts.sum() / counts).astype(np.float32)


def lr_schedule(r: Recipe) -> optax.Schedule:
  """Linear warm-up 0 -> peak over warmup_steps, cosine peak -> final at `steps`."""
  return optax.warmup_cosine_decay_schedule(0.0, r.peak_lr, r.warmup_steps, r.steps, r.final_lr)


def weighted_ce(logits_Nx2: jax.Array, labels_N: jax.Array, cw_2: jax.Array,
                valid_N: jax.Array | None = None) -> jax.Array:
  """sum_r w_{y_r} CE_r / sum_r w_{y_r} (torch CrossEntropyLoss(weight=...) semantics)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_Nx2.astype(jnp.float32), labels_N)
  w = cw_2[labels_N]
  if valid_N is not None:
    w = w * valid_N.astype(jnp.float32)
  return (ce * w).sum() / jnp.maximum(w.sum(), 1e-12)


def with_head(encoder: nnx.Module, model_type: str, num_labels: int, seed: int) -> nnx.Module:
  """The same encoder with a freshly initialised `num_labels`-way classification head."""
  fam = encoders.family(model_type)
  cfg = dataclasses.replace(encoder.config, num_labels=num_labels)
  new = fam.Model(cfg, rngs=nnx.Rngs(seed))
  nnx.update(new, nnx.state(encoder))  # every encoder weight; only the head keeps its init
  return new


def init_classifier(init: str | os.PathLike | None, r: Recipe, **config_fields: Any
                    ) -> tuple[PairClassifier, encoders.EncoderTokenizer, pathlib.Path]:
  """(classifier, tokenizer, encoder folder) for a recipe from a HF encoder (or decoder
  *ForSequenceClassification) folder; config_fields override ClassifierConfig fields
  (answer_max_words, answer_max_tokens, max_length, similar_label)."""
  folder = pathlib.Path(init) if init else encoders.default_encoder_path()
  model_type = encoders.read_hf_config(folder).get("model_type")
  if r.mode == PairMode.BI and encoders.is_decoder_family(model_type):
    raise InputError(f"--recipe {r.name}", f"{folder} is a decoder ({model_type}): decoder "
                     "classifiers are cross-encoders (use --recipe full)")
  encoder, tok = encoders.load_encoder(folder)
  if r.mode == PairMode.CROSS and encoder.config.num_labels != 2:
    if encoder.config.num_labels is not None:
      raise InputError(folder, f"has a {encoder.config.num_labels}-way head; a pair classifier "
                       "needs a 2-way one (num_labels=2) or no head (a fresh one is added)")
    encoder = with_head(encoder, model_type, 2, r.seed)
  # A recipe's window is a default, not a user setting: fit it to a short-position encoder.
  window = min(r.max_tokens, encoder.config.max_position_embeddings - 2)
  config = ClassifierConfig(mode=r.mode, model_type=model_type, max_tokens=window,
                            windows=r.windows, bag_tokens=r.bag_tokens, threshold=r.threshold,
                            head_hidden=r.head_hidden, **config_fields)
  return PairClassifier(encoder, config, rngs=nnx.Rngs(r.seed)), tok, folder


def fit_idf(clf: PairClassifier, tok: encoders.EncoderTokenizer, texts: Sequence[str]) -> None:
  """idf_t = log((1 + n) / (1 + df_t)) over the answers' scored tokens; 0 for special tokens."""
  c = clf.config
  V = clf.encoder.config.vocab_size
  df = np.zeros(V, np.int64)
  for ids in tok.encode(texts, c.bag_tokens):
    df[np.unique(np.asarray(ids, np.int64))] += 1
  idf = np.log((1.0 + len(texts)) / (1.0 + df)).astype(np.float32)
  idf[[tok.cls_id, tok.sep_id, tok.pad_id]] = 0.0
  clf.head.idf_V.set_value(jnp.asarray(idf))


# ------------------------------------------------------------------------------------------------
# Frozen encoder: train the head on precomputed similarity features.


def _pair_features(scorer: PairScorer, a: Sequence[str], b: Sequence[str], max_chunk: int = 256
                   ) -> np.ndarray:
  """phi [N, K] of N pairs, in near-equal chunks of at most `max_chunk` pairs."""
  num_chunks = -(-len(a) // max_chunk)
  chunk = -(-len(a) // num_chunks)
  out = []
  for s in range(0, len(a), chunk):
    groups = [[x, y] for x, y in zip(a[s:s + chunk], b[s:s + chunk])]
    n = len(groups)
    groups += groups[:1] * (chunk - n)  # one group count for every chunk (at most one extra)
    out.append(np.asarray(scorer.features(groups))[:n, 0, 1])
  return np.concatenate(out)


def train_head(head: nnx.Module, phi_NxK: np.ndarray, labels_N: np.ndarray, r: Recipe) -> float:
  """Full-batch AdamW on the head; every pair in both orders (phi is symmetric, so the swapped
  copy equals the original: the augmentation only matters in cross mode). Returns final loss."""
  phi = jnp.asarray(np.concatenate([phi_NxK, phi_NxK]))
  y = jnp.asarray(np.concatenate([labels_N, labels_N]).astype(np.int32))
  cw = jnp.asarray(class_weights(labels_N))
  opt = nnx.Optimizer(head, _head_tx(r), wrt=nnx.Param)
  losses = [float(_head_step(head, opt, phi, y, cw)) for _ in range(r.steps)]
  return losses[-1]


@functools.lru_cache(maxsize=8)
def _head_tx(r: Recipe) -> optax.GradientTransformation:
  # One transformation object per recipe: it is static in the optimizer's graph, so reusing it lets
  # the k fold heads and the final head share one compiled step.
  return optax.adamw(lr_schedule(r), weight_decay=r.weight_decay)


@nnx.jit
def _head_step(head, opt, phi, y, cw):
  loss, grads = nnx.value_and_grad(lambda h: weighted_ce(h(phi), y, cw))(head)
  opt.update(head, grads)
  return loss


def _head_probs(head: nnx.Module, phi_NxK: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(head(jnp.asarray(phi_NxK)), axis=-1)[:, 1])


def oof_threshold(clf: PairClassifier, phi_NxK: np.ndarray, labels_N: np.ndarray, r: Recipe
                  ) -> tuple[float, dict[str, float]]:
  """tau maximising accuracy of out-of-fold probabilities over `threshold_folds` folds."""
  k = r.threshold_folds
  folds = np.random.default_rng(r.seed + 1).permutation(len(labels_N)) % k
  oof = np.zeros(len(labels_N))
  for f in range(k):
    head = nnx.clone(clf.head)
    _reset_head(head, r.seed + 2 + f)
    train_head(head, phi_NxK[folds != f], labels_N[folds != f], r)
    oof[folds == f] = _head_probs(head, phi_NxK[folds == f])
  tau, acc = classifier_eval.best_threshold(oof, labels_N)
  return tau, {"oof_auc": classifier_eval.roc_auc(oof, labels_N), "oof_best_accuracy": acc}


def set_cosine_head(head: nnx.Module, scale: float = 10.0) -> None:
  """p = sigmoid(scale * (cos(m_i, m_j) - 0.5)): monotone in the embedding cosine alone."""
  if head.hidden:
    raise InputError("zeroshot", "the cosine head needs head_hidden = 0")
  w = np.zeros(head.w2_ExC.get_value().shape, np.float32)
  w[0, 1] = scale  # row 0 of phi is cos(m_i, m_j)
  head.w2_ExC.set_value(jnp.asarray(w))
  head.b2_C.set_value(jnp.asarray([0.0, -0.5 * scale], jnp.float32))


def _reset_head(head: nnx.Module, seed: int) -> None:
  fresh = type(head)(head.idf_V.get_value().shape[0], head.hidden, rngs=nnx.Rngs(seed))
  fresh.idf_V.set_value(head.idf_V.get_value())
  nnx.update(head, nnx.state(fresh))


# ------------------------------------------------------------------------------------------------
# Every weight trains: mini-batches of rows.


def _train_all(clf: PairClassifier, tok: encoders.EncoderTokenizer, a: list[str], b: list[str],
               labels: np.ndarray, r: Recipe, shapes: ScoringShapes, log: Log) -> float:
  c = clf.config
  cw = jnp.asarray(class_weights(labels))
  opt = nnx.Optimizer(clf, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      lr_schedule(r), weight_decay=r.weight_decay)), wrt=nnx.Param)
  # Ordered examples: every pair in both orders (the swap augmentation), reshuffled each epoch.
  order = np.concatenate([np.stack([np.arange(len(a)), np.zeros(len(a), int)], 1),
                          np.stack([np.arange(len(a)), np.ones(len(a), int)], 1)])
  rng = np.random.default_rng(r.seed)
  cross = c.mode == PairMode.CROSS
  cut = PairScorer(clf, tok, shapes).cut  # the answer cut scoring will use, validated here
  longest = cut.longest_row(cross, tok.pair_overhead)

  @functools.partial(nnx.jit, static_argnames=("num_groups",))
  def step(clf, opt, rows, y, *, num_groups):
    def loss_fn(clf):
      if cross:
        logits = cross_row_logits(clf, rows["input_ids_PxL"], rows["attention_mask_PxL"],
                                  rows["token_type_ids_PxL"], shapes.micro_batch)
        return weighted_ce(logits, y[rows["group_P"]], cw, rows["valid_P"])
      logits = bi_group_logits(clf, *bi_args(rows), num_groups, 2,
                               micro_batch=shapes.micro_batch)[:, 0, 1]
      return weighted_ce(logits, y, cw)

    loss, grads = nnx.value_and_grad(loss_fn)(clf)
    opt.update(clf, grads)
    return loss

  perm, pos, loss = rng.permutation(len(order)), 0, float("nan")
  for t in range(r.steps):
    if pos + r.batch_size > len(perm):
      perm, pos = rng.permutation(len(order)), 0
    pick = order[perm[pos:pos + r.batch_size]]
    pos += r.batch_size
    groups = [[a[i], b[i]] if s == 0 else [b[i], a[i]] for i, s in pick]
    rows = build_rows(groups, tok, cross=cross, max_tokens=cut.tokens, symmetric=False,
                      short_rule_words=None, row_buckets=(len(groups) * (1 if cross else
                                                                          2 * c.windows),),
                      length_buckets=geometric_buckets(min(shapes.min_length, longest), longest),
                      row_multiple=shapes.micro_batch, windows=c.windows,
                      bag_tokens=c.bag_tokens, max_words=cut.words, pair_tokens=cut.pair_tokens)
    loss = float(step(clf, opt, device_rows(rows), jnp.asarray(labels[pick[:, 0]], jnp.int32),
                      num_groups=len(groups)))
    if t % 10 == 0 or t == r.steps - 1:
      log(f"step {t + 1}/{r.steps} loss {loss:.4f}")
  return loss


# ------------------------------------------------------------------------------------------------


def train(pairs: list[dict[str, Any]], r: Recipe, out: str | os.PathLike,
          init: str | os.PathLike | None = None, shapes: ScoringShapes = ScoringShapes(),
          log: Log = print, threshold: float | None = None, **config_fields: Any
          ) -> dict[str, Any]:
  """Trains a classifier with recipe `r` on `pairs`, saves it into `out`, returns its metrics.

  Writes out/classifier.json, out/checkpoint/, out/hf/ (see classifier_io) and out/val.jsonl (the
  held-out split, never trained on: `darling-jax classifier eval --checkpoint out --pairs
  out/val.jsonl` gives the validation numbers).

  threshold: the tau saved with the classifier (None: the recipe's, or its out-of-fold choice);
  config_fields: ClassifierConfig overrides (answer_max_words, answer_max_tokens, max_length).
  """
  from darling_jax.diversity.classifier import check_threshold

  if threshold is not None:
    threshold = check_threshold(threshold, "--threshold")
  t0 = time.time()
  labels = np.asarray([p["similar"] for p in pairs], int)
  tr, va = stratified_split(labels, r.val_fraction, r.seed)
  if len(tr) < 2 or len(np.unique(labels[tr])) < 2:
    raise InputError("pairs", f"{len(pairs)} pairs leave too few training pairs of both classes")
  a = [pairs[i]["generation_0"] for i in tr]
  b = [pairs[i]["generation_1"] for i in tr]
  y = labels[tr]
  clf, tok, enc_folder = init_classifier(init, r, **config_fields)
  PairScorer(clf, tok, shapes)  # an answer length the encoder cannot hold fails here, not later
  log(f"recipe {r.name}: {len(tr)} training / {len(va)} validation pairs; encoder {enc_folder}")
  metrics: dict[str, Any] = {}
  if clf.config.mode == PairMode.BI and r.trainable != Trainable.NONE:
    fit_idf(clf, tok, a + b)
  tau = r.threshold
  match r.trainable:
    case Trainable.HEAD:
      phi = _pair_features(PairScorer(clf, tok, shapes), a, b)
      log(f"encoded {2 * len(tr)} training answers in {time.time() - t0:.1f}s")
      if r.threshold_folds > 1:
        tau, metrics = oof_threshold(clf, phi, y, r)
      metrics["final_loss"] = train_head(clf.head, phi, y, r)
      metrics["train_auc"] = classifier_eval.roc_auc(_head_probs(clf.head, phi), y)
    case Trainable.ALL:
      metrics["final_loss"] = _train_all(clf, tok, a, b, y, r, shapes, log)
    case Trainable.NONE:
      set_cosine_head(clf.head)
  if threshold is not None:
    tau = threshold
  clf.config = dataclasses.replace(clf.config, threshold=float(np.clip(tau, 0.0, 1.0)))
  train_seconds = time.time() - t0
  meta = {"recipe": r.to_json(), "encoder_init": str(enc_folder), "train_seconds": train_seconds,
          "split": {"seed": r.seed, "val_fraction": r.val_fraction, "n_train": int(len(tr)),
                    "n_val": int(len(va))},
          "train_metrics": metrics}
  out = save_classifier(clf, enc_folder, out, meta)
  with open(out / "val.jsonl", "w", encoding="utf-8") as f:
    for i in va:
      f.write(json.dumps(pairs[i]) + "\n")
  log(f"saved {out} ({train_seconds:.1f}s); validate with: darling-jax classifier eval "
      f"--checkpoint {out} --pairs {out / 'val.jsonl'}")
  return {"train_seconds": train_seconds, "threshold": clf.config.threshold, **metrics}
