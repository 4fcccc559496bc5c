"""Plain NumPy / Python (float64) references for the DARLING math, written independently of the JAX
code: loops and dicts where that is the most obvious way to state the definition.

The tests import this file by path (pytest runs with --import-mode=importlib, so the tests
directory is not on sys.path).
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------------------------
# Partitions


def union_find(equiv: np.ndarray, valid=None) -> np.ndarray:
  """Union-find over every pair (i, j), i != j, with equiv[i, j] or equiv[j, i]; id = min member."""
  g = equiv.shape[0]
  valid = np.ones(g, bool) if valid is None else np.asarray(valid, bool)
  parent = list(range(g))

  def find(x):
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  for i in range(g):
    for j in range(g):
      if i != j and valid[i] and valid[j] and (equiv[i, j] or equiv[j, i]):
        ri, rj = find(i), find(j)
        if ri != rj:
          parent[max(ri, rj)] = min(ri, rj)
  roots = [find(i) for i in range(g)]
  smallest = {}
  for i, r in enumerate(roots):
    smallest.setdefault(r, i)
  return np.array([smallest[r] for r in roots], dtype=np.int64)


def greedy(equiv: np.ndarray, valid=None) -> np.ndarray:
  """NoveltyBench greedy: compare i with each class's first member, in creation order."""
  g = equiv.shape[0]
  valid = np.ones(g, bool) if valid is None else np.asarray(valid, bool)
  representatives: list[int] = []
  out = np.zeros(g, dtype=np.int64)
  for i in range(g):
    for rep in representatives:
      if valid[i] and valid[rep] and equiv[rep, i]:
        out[i] = rep
        break
    else:
      representatives.append(i)
      out[i] = i
  return out


def diversity(classes: np.ndarray, floor: float = 0.1, valid=None) -> np.ndarray:
  g = len(classes)
  valid = np.ones(g, bool) if valid is None else np.asarray(valid, bool)
  n = int(valid.sum())
  out = np.zeros(g)
  for i in range(g):
    if not valid[i]:
      continue
    size = sum(1 for j in range(g) if valid[j] and classes[j] == classes[i])
    frac = (n - size) / (n - 1) if n > 1 else 0.0
    out[i] = max(frac, floor)
  return out


def distinct(classes: np.ndarray, valid=None) -> int:
  valid = np.ones(len(classes), bool) if valid is None else np.asarray(valid, bool)
  return len({c for c, v in zip(classes, valid) if v})


# ---------------------------------------------------------------------------------------------
# Fusion and advantages (one group at a time: 1-D arrays of that group's valid members)


def zscore(x: np.ndarray) -> np.ndarray:
  std = x.std()  # population std
  return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def fuse(q, div, mode, lq=1.0, ld=1.0, shift=False):
  q = np.asarray(q, np.float64)
  div = np.asarray(div, np.float64)
  if shift:
    q = q - q.min()
  if mode == "multiplicative":
    return q * div
  if mode == "additive":
    return lq * q + ld * div
  if mode == "zscore_additive":
    return lq * zscore(q) + ld * zscore(div)
  if mode == "quality_only":
    return q
  raise ValueError(mode)


def advantages(rewards_2d: np.ndarray, scale: str, eps: float, valid=None) -> np.ndarray:
  r = np.asarray(rewards_2d, np.float64)
  valid = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
  out = np.zeros_like(r)
  all_valid = r[valid]
  batch_std = all_valid.std(ddof=1) if all_valid.size > 1 else 0.0
  for b in range(r.shape[0]):
    members = r[b][valid[b]]
    if members.size == 0:
      continue
    centred = members - members.mean()
    if scale == "group":
      std = members.std(ddof=1) if members.size > 1 else 0.0
      centred = centred / (std + eps)
    elif scale == "batch":
      centred = centred / (batch_std + eps)
    out[b][valid[b]] = centred
  return out


# ---------------------------------------------------------------------------------------------
# Losses (rows = sequences, columns = tokens)


def ppo_token_loss(logp_new, logp_old, adv_tokens, eps_low, eps_high, c):
  """Per-token PPO loss, one token at a time."""
  logp_new, logp_old = np.asarray(logp_new, np.float64), np.asarray(logp_old, np.float64)
  out = np.zeros_like(logp_new)
  for idx in np.ndindex(logp_new.shape):
    a = adv_tokens[idx]
    rho = np.exp(np.clip(logp_new[idx] - logp_old[idx], -20, 20))
    unclipped = -a * rho
    clipped = -a * min(max(rho, 1 - eps_low), 1 + eps_high)
    loss = max(unclipped, clipped)
    if c is not None and a < 0:
      loss = min(loss, -a * c)
    out[idx] = loss
  return out


def ppo_token_grad(logp_new, logp_old, adv_tokens, eps_low, eps_high, c):
  """d(token loss)/d(logp_new), analytically: -A * rho where the unclipped branch is active."""
  out = np.zeros(np.shape(logp_new))
  for idx in np.ndindex(out.shape):
    a = adv_tokens[idx]
    rho = np.exp(logp_new[idx] - logp_old[idx])
    unclipped = -a * rho
    clipped = -a * min(max(rho, 1 - eps_low), 1 + eps_high)
    # Inside the clip range both branches equal -A * rho; outside it the max picks one of them.
    active_unclipped = (1 - eps_low <= rho <= 1 + eps_high) or unclipped > clipped
    if c is not None and a < 0 and max(unclipped, clipped) > -a * c:
      active_unclipped = False
    out[idx] = -a * rho if active_unclipped else 0.0
  return out


def aggregate(loss, mask, mode, normalizer=None, scale_factor=None):
  loss = np.asarray(loss, np.float64).reshape(-1, np.shape(loss)[-1])
  mask = np.asarray(mask, bool).reshape(loss.shape)
  seq_rows = [row for row in range(loss.shape[0]) if mask[row].any()]
  if normalizer is None:
    normalizer = mask.sum() if mode == "token-mean" else len(seq_rows)
  total = 0.0
  for row in range(loss.shape[0]):
    token_sum = sum(loss[row, t] for t in range(loss.shape[1]) if mask[row, t])
    if mode in ("token-mean", "seq-mean-token-sum"):
      total += token_sum
    elif mode == "seq-mean-token-mean":
      total += token_sum / mask[row].sum() if mask[row].any() else 0.0
    elif mode == "seq-mean-token-sum-norm":
      total += token_sum / (loss.shape[1] if scale_factor is None else scale_factor)
    else:
      raise ValueError(mode)
  return total / normalizer if normalizer > 0 else 0.0


def kl(logp, logp_ref, estimator):
  d = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
  if estimator in ("k1", "kl"):
    return d
  if estimator in ("k2", "mse"):
    return 0.5 * d**2
  if estimator in ("low_var_kl", "k3"):
    x = np.clip(-d, -20, 20)
    return np.clip(np.exp(x) - x - 1, -10, 10)
  raise ValueError(estimator)


def kl_grad(logp, logp_ref, estimator):
  """d KL / d logp, analytically (ignoring the clamps; tests keep |delta| small)."""
  d = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
  if estimator == "k1":
    return np.ones_like(d)
  if estimator == "k2":
    return d
  if estimator == "low_var_kl":
    return 1.0 - np.exp(-d)
  raise ValueError(estimator)
