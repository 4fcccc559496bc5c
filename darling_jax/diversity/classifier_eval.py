"""Metrics of an equivalence classifier on human-labelled pairs: accuracy, exact ROC AUC, threshold.

AUC is the Mann-Whitney statistic, computed exactly from ranks (ties count one half):

    AUC = P(s+ > s-) + 0.5 P(s+ = s-) = (R+ - n+(n+ + 1)/2) / (n+ n-),

with R+ the sum of the (tie-averaged, 1-based) ranks of the positive scores among all scores.
The best threshold maximises accuracy of `p > tau` over the midpoints between consecutive distinct
scores (and the two extremes), ties broken towards the threshold nearest 0.5.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from darling_jax.errors import InputError

PAIR_FIELDS = ("generation_0", "generation_1", "similar")


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Rows of a pairs jsonl (fields generation_0, generation_1: str; similar: 0/1 or bool)."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    raise InputError(path, "file not found") from None
  except UnicodeDecodeError as e:
    raise InputError(path, f"not UTF-8 text ({e})") from None
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}:{n}", f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
      raise InputError(f"{path}:{n}", "each line must be a JSON object")
    for f in PAIR_FIELDS:
      if f not in row:
        raise InputError(f"{path}:{n}", f"missing field {f!r}")
    for f in PAIR_FIELDS[:2]:
      if not isinstance(row[f], str):
        raise InputError(f"{path}:{n}", f"field {f!r} must be a string")
    if row["similar"] not in (0, 1, True, False):
      raise InputError(f"{path}:{n}", f"field 'similar' must be 0/1, got {row['similar']!r}")
    rows.append({**row, "similar": int(row["similar"])})
  if not rows:
    raise InputError(path, "no pairs in file")
  return rows


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Exact ROC AUC (Mann-Whitney U with tie-averaged ranks); NaN if one class is absent."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  if scores.shape != labels.shape or scores.ndim != 1:
    raise InputError("roc_auc", f"scores {scores.shape} and labels {labels.shape} must be equal "
                     "1-D shapes")
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_s = scores[order]
  ranks = np.empty(len(scores), np.float64)
  # Average rank over each run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = 0.5 * (s + 1 + e)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
  """Fraction of pairs where `score > threshold` equals the label."""
  return float(np.mean((np.asarray(scores) > threshold) == np.asarray(labels).astype(bool)))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """(threshold, accuracy) maximising accuracy of `score > threshold`."""
  s = np.unique(np.asarray(scores, np.float64))
  candidates = np.r_[s[0] - 1e-6, 0.5 * (s[1:] + s[:-1]), s[-1]]
  accs = np.array([accuracy(scores, labels, t) for t in candidates])
  best = np.flatnonzero(accs == accs.max())
  t = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
  return float(t), float(accs.max())


def summarize(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
  """The eval report.

  Keys: "accuracy" at the configured `threshold`, "auc", "threshold" (the accuracy-maximising
  threshold on these pairs), "best_accuracy" (accuracy there), "configured_threshold", "n",
  "n_similar".
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(int)
  t_best, acc_best = best_threshold(scores, labels)
  return {
      "accuracy": accuracy(scores, labels, threshold),
      "auc": roc_auc(scores, labels),
      "threshold": t_best,
      "best_accuracy": acc_best,
      "configured_threshold": float(threshold),
      "n": int(len(labels)),
      "n_similar": int(labels.sum()),
  }
