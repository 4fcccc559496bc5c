"""Plain NumPy references for the sampling tests (imported by path: pytest uses importlib mode).

`keep_mask` restates transformers' logits warpers (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, MinPLogitsWarper, applied in that order) in float64.
"""

from __future__ import annotations

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
  z = np.exp(x - x.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def filtered_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
  """[R, V] logits after the warpers, removed tokens at -inf."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k > 0:
    kth = np.sort(x, axis=-1)[:, -top_k][:, None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    order = np.argsort(x, axis=-1, kind="stable")  # ascending, as transformers sorts
    cum = np.cumsum(_softmax(np.take_along_axis(x, order, -1)), axis=-1)
    remove_sorted = cum <= 1 - top_p
    remove_sorted[:, -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, -1)
    x = np.where(remove, -np.inf, x)
  if min_p > 0.0:
    p = _softmax(x)
    x = np.where(p < min_p * p.max(axis=-1, keepdims=True), -np.inf, x)
  return x


def target_probs(logits: np.ndarray, **kw) -> np.ndarray:
  return _softmax(filtered_logits(logits, **kw))
