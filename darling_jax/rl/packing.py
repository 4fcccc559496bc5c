"""Host-side packing plans: where every real token of a step goes, from the lengths alone.

Axis letters: B prompts, G rollouts per prompt, P prompt columns (left-padded), N response
columns, M mini-batches, U micro-batches per mini-batch, R rows per micro-batch, T row length.

A sequence with Lp prompt and Lr response tokens occupies Lp + Lr consecutive columns
[o, o + Lp + Lr) of one row, with positions 0, 1, ... and its own segment id; column o + Lp - 1 + t
predicts response token t. Its prompt b decides its mini-batch, b % M, as in the padded layout.

  bucketed  one sequence per row; micro-batch u of mini-batch m holds the prompts j = u (mod U)
            of that mini-batch (update.micro_batch_prompts, as padded); T = bucket of the longest
            sequence, at most the padded P + N (in both layouts)
  packed    first-fit decreasing into rows of T = bucket of the longest sequence, rows taken in
            order into micro-batches of R = max_tokens_per_micro_batch // T rows (0: all rows
            of the fullest mini-batch, rounded up to a count bucket)
R is a multiple of the devices on the batch mesh axes (rows are sharded over them); U (packed) and
R (budget 0) come from `COUNT_BUCKETS`; missing rows / micro-batches are empty (segment 0) and
contribute exactly zero. Sequences without response tokens are not placed at all.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.rl.layout import COUNT_BUCKETS, Layout, bucket_up
from darling_jax.rl.state import PackedBatch, UpdateBatch
from darling_jax.rl.update import UpdateConfig


@dataclasses.dataclass(frozen=True)
class PackPlan:
  """Index arrays [M, U, R, T] (see state.PackedBatch) and the facts worth logging."""

  src: np.ndarray
  tgt: np.ndarray
  seg: np.ndarray
  pos: np.ndarray
  layout: Layout
  real_tokens: int  # prompt + response tokens placed (each sequence's prompt counted once)
  response_tokens: int

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return self.src.shape  # type: ignore[return-value]

  @property
  def computed_tokens(self) -> int:
    return int(self.src.size)

  def facts(self) -> dict[str, Any]:
    M, U, R, T = self.shape
    return {"layout": self.layout.value, "row_len": T, "rows_per_micro_batch": R,
            "micro_batches": U, "mini_batches": M, "real_tokens": self.real_tokens,
            "response_tokens": self.response_tokens, "computed_tokens": self.computed_tokens,
            "fill": self.real_tokens / max(self.computed_tokens, 1)}


def batch_devices(mesh: Mesh | None, batch_axes: tuple[str, ...] = ("data", "fsdp")) -> int:
  """How many ways the batch (row) axis is split: the product of the batch axes in the mesh."""
  if mesh is None:
    return 1
  return math.prod(mesh.shape[a] for a in batch_axes if a in mesh.shape)


def lengths_from_masks(prompt_mask_BxP: np.ndarray,
                       response_mask_BxGxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(prompt lengths [B], response lengths [B, G]) after checking the masks' shapes: prompts
  left-padded (a suffix of real tokens) and responses a prefix, which packing relies on."""
  pm = np.asarray(prompt_mask_BxP, bool)
  rm = np.asarray(response_mask_BxGxN, bool)
  P, N = pm.shape[1], rm.shape[2]
  lp = pm.sum(-1)
  lr = rm.sum(-1)
  if not np.array_equal(pm, np.arange(P)[None] >= (P - lp)[:, None]):
    raise InputError("prompt_mask", "packing needs left-padded prompts (real tokens last)")
  if not np.array_equal(rm, np.arange(N)[None, None] < lr[..., None]):
    raise InputError("response_mask", "packing needs right-padded responses (a prefix of "
                     "valid tokens)")
  return lp.astype(np.int64), lr.astype(np.int64)


def _check_lengths(seq_len: np.ndarray, prompt_len: np.ndarray, buckets: tuple[int, ...],
                   max_positions: int | None) -> int:
  """The row length T for sequences of `seq_len` (bucket of the longest), or an InputError."""
  if np.any(prompt_len < 1):
    raise InputError("prompt_mask", f"prompt {int(np.argmin(prompt_len))} has no tokens: the "
                     "first response token needs a position to be predicted from")
  longest = int(seq_len.max(initial=1))
  where = np.unravel_index(int(np.argmax(seq_len)), seq_len.shape)
  if max_positions is not None and longest > max_positions:
    raise InputError("policy.max_position_embeddings", f"sequence {tuple(map(int, where))} has "
                     f"{longest} prompt + response tokens, more than the model's {max_positions} "
                     "positions")
  if longest > buckets[-1]:
    raise InputError("update.length_buckets", f"sequence {tuple(map(int, where))} has {longest} "
                     f"prompt + response tokens, more than the largest bucket {buckets[-1]}")
  return bucket_up(longest, buckets)


def _first_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, offset) of each item when filling rows of `capacity` longest-first, each item into the
  first row it fits; rows numbered in creation order."""
  order = np.argsort(-lengths, kind="stable")
  free = np.zeros(len(lengths), np.int64)  # at most one row per item
  used = 0
  row = np.zeros(len(lengths), np.int64)
  off = np.zeros(len(lengths), np.int64)
  for i in order:
    fits = np.flatnonzero(free[:used] >= lengths[i])
    r = int(fits[0]) if fits.size else used
    if r == used:
      free[r] = capacity
      used += 1
    row[i], off[i] = r, capacity - free[r]
    free[r] -= lengths[i]
  return row, off


def plan_layout(prompt_len_B: np.ndarray, response_len_BxG: np.ndarray, P: int, N: int,
                config: UpdateConfig, num_devices: int = 1,
                max_positions: int | None = None) -> PackPlan:
  """The packing plan of one step (module docstring); validation errors before anything runs."""
  layout = config.layout
  if layout is Layout.PADDED:
    raise InputError("update.layout", "the padded layout has no packing plan")
  lp = np.asarray(prompt_len_B, np.int64)
  lr = np.asarray(response_len_BxG, np.int64)
  B, G = lr.shape
  if lp.shape != (B,) or lp.max(initial=0) > P or lr.max(initial=0) > N:
    raise InputError("update batch", f"lengths {lp.shape}/{lr.shape} do not fit [B={B}, P={P}] "
                     f"prompts and [B, G={G}, N={N}] responses")
  M, U_prompts = config.split(B)
  seq_len = np.where(lr > 0, lp[:, None] + lr, 0)
  # Never longer than the padded P + N: that shape is needed anyway and holds every sequence.
  T = min(_check_lengths(seq_len, lp, config.buckets(), max_positions), P + N)
  nd = num_devices
  b_idx, g_idx = np.nonzero(lr > 0)  # the sequences that are placed
  mb = b_idx % M
  j = b_idx // M  # index of the prompt within its mini-batch
  if layout is Layout.BUCKETED:
    U = U_prompts
    u = j % U
    row = (j // U) * G + g_idx
    off = np.zeros_like(row)
    R = nd * math.ceil((B // (M * U)) * G / nd)
  else:
    budget = config.max_tokens_per_micro_batch
    if budget and budget < nd * T:
      raise InputError("update.max_tokens_per_micro_batch", f"{budget} tokens hold no micro-batch: "
                       f"one row is {T} tokens (the longest sequence, {int(seq_len.max())} "
                       f"tokens, rounded up to a bucket) and every micro-batch needs a multiple "
                       f"of {nd} rows (the devices on the batch mesh axes)")
    row = np.zeros_like(b_idx)
    off = np.zeros_like(b_idx)
    rows_per_mb = np.zeros(M, np.int64)
    for m in range(M):
      sel = np.flatnonzero(mb == m)
      row[sel], off[sel] = _first_fit_decreasing(seq_len[b_idx[sel], g_idx[sel]], T)
      rows_per_mb[m] = row[sel].max(initial=-1) + 1
    most = max(int(rows_per_mb.max(initial=0)), 1)
    if budget:
      R = budget // T // nd * nd
    else:
      R = nd * bucket_up(math.ceil(most / nd), COUNT_BUCKETS, "update micro-batch rows")
    U = bucket_up(math.ceil(most / R), COUNT_BUCKETS, "update micro-batches")
    u, row = row // R, row % R
  return _index_arrays(M, U, R, T, P, N, G, mb, u, row, off, b_idx, g_idx, lp, lr, layout)


def _index_arrays(M, U, R, T, P, N, G, mb, u, row, off, b_idx, g_idx, lp, lr,
                  layout) -> PackPlan:
  """Fills src / tgt / seg / pos [M, U, R, T] for the placed sequences (all vectorised)."""
  src = np.full((M, U, R, T), -1, np.int32)
  tgt = np.full((M, U, R, T), -1, np.int32)
  seg = np.zeros((M, U, R, T), np.int32)
  pos = np.zeros((M, U, R, T), np.int32)
  Lp = lp[b_idx]
  Lr = lr[b_idx, g_idx]
  L = Lp + Lr
  s = b_idx * G + g_idx
  row_key = (mb * U + u) * R + row
  # Segment ids: 1, 2, ... in offset order within each row.
  order = np.lexsort((off, row_key))
  first = np.r_[True, row_key[order][1:] != row_key[order][:-1]]
  start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
  seg_id = np.empty(len(order), np.int64)
  seg_id[order] = np.arange(len(order)) - start + 1
  # One entry per placed token: item index and k = 0 .. L-1 within its sequence.
  item = np.repeat(np.arange(len(L)), L)
  k = np.arange(int(L.sum())) - np.repeat(np.cumsum(L) - L, L)
  flat = row_key[item] * T + off[item] + k
  src.reshape(-1)[flat] = s[item] * (P + N) + (P - Lp[item]) + k
  seg.reshape(-1)[flat] = seg_id[item]
  pos.reshape(-1)[flat] = k
  t = k - Lp[item] + 1  # the response token that column predicts
  predicts = (t >= 0) & (t < Lr[item])
  tgt.reshape(-1)[flat[predicts]] = (s[item] * N + t)[predicts]
  return PackPlan(src=src, tgt=tgt, seg=seg, pos=pos, layout=layout, real_tokens=int(L.sum()),
                  response_tokens=int(Lr.sum()))


class BatchPacker:
  """Turns a step's UpdateBatch into what the jitted update (and reference forward) consume.

    packer = BatchPacker(update_cfg, mesh, max_positions=policy_cfg.max_position_embeddings)
    packed, facts = packer(batch)      # host: masks -> lengths -> plan; device: index arrays
    state, metrics = update_fn(state, packed, frozen)

  For the padded layout it wraps the batch unchanged (no host transfer). `facts` holds the
  layout, row length (the bucket), rows / micro-batches, fill, the compile key (the static shapes
  the step is traced for) and how many distinct keys this packer has produced (its compiles).
  """

  def __init__(self, config: UpdateConfig, mesh: Mesh | None = None,
               batch_axes: tuple[str, ...] = ("data", "fsdp"), max_positions: int | None = None):
    self.config = config
    self.num_devices = batch_devices(mesh, batch_axes)
    self.max_positions = max_positions
    self.keys: set[tuple] = set()

  def plan(self, batch: UpdateBatch,
           lengths: tuple[np.ndarray, np.ndarray] | None = None) -> PackPlan:
    if lengths is None:
      lengths = lengths_from_masks(jax.device_get(batch.prompt_mask),
                                   jax.device_get(batch.response_mask))
    return plan_layout(*lengths, batch.prompt_ids.shape[1], batch.response_ids.shape[2],
                       self.config, self.num_devices, self.max_positions)

  def __call__(self, batch: UpdateBatch, lengths: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[PackedBatch, dict[str, Any]]:
    """`lengths`: (prompt lengths [B], response lengths [B, G]) the host already has (e.g. from
    the sampler, or where the masks are not addressable from this process); the masks must then
    be left-padded prompts and prefix responses, unchecked. None: read from the batch's masks."""
    B, G, N = batch.response_ids.shape
    P = batch.prompt_ids.shape[1]
    if self.config.layout is Layout.PADDED:
      key = ("padded", B, G, P, N)
      facts: dict[str, Any] = {"layout": "padded", "row_len": P + N}
      packed = PackedBatch(batch=batch)
    else:
      plan = self.plan(batch, lengths)
      key = (plan.layout.value, B, G, P, N) + plan.shape
      facts = plan.facts()
      packed = PackedBatch(batch=batch, src=jnp.asarray(plan.src), tgt=jnp.asarray(plan.tgt),
                           seg=jnp.asarray(plan.seg), pos=jnp.asarray(plan.pos))
    self.keys.add(key)
    facts.update(compile_key=key, compiles=len(self.keys))
    return packed, facts
