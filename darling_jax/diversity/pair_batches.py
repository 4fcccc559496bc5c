"""Host side of pair scoring: tokenise groups of answers into bucketed, static-shape arrays.

B groups of G answers give B * G(G-1)/2 unordered pairs (i < j). Pairs that the short-answer rule
decides never reach the model. The rest become rows of a padded array whose row count and length
are rounded up to buckets, so the jitted scorer compiles once per (bucket, bucket) and not once per
batch:

  cross mode: row r = `[CLS] y_i [SEP] y_j [SEP]` (when symmetric, also a row with y_j first);
  bi mode:    row r = `[CLS] w [SEP]` for each window w (up to `windows` consecutive runs of
              `max_tokens` tokens) of each answer that some model-scored pair needs.

Each answer is first cut to `max_words` whitespace words (answer_length.cut_words), then to its
first `max_tokens` tokens on its own; with `pair_tokens`, a cross row then keeps that many answer
tokens in all, longest first (the HF tokenizers' rule, answer_length.longest_first).

Axis letters: B groups, G answers per group, P rows (pairs or answer windows), L row length,
A answers (bi mode bags), T bag length.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from darling_jax.diversity.answer_length import cut_words, longest_first
from darling_jax.diversity.short_rule import short_rule_matrix
from darling_jax.errors import InputError
from darling_jax.models.encoders import EncoderTokenizer


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; past the largest, the next multiple of the largest."""
  for b in sorted(buckets):
    if n <= b:
      return b
  top = max(buckets)
  return -(-n // top) * top


def geometric_buckets(lo: int, hi: int, steps: int = 4) -> tuple[int, ...]:
  """Geometric buckets from lo to hi (inclusive), `steps` per doubling: 64, 80, 96, 112, 128, ...

  Padding wastes at most 1/steps of a call, and the number of compiled shapes grows only with
  log(hi / lo).
  """
  out = [lo]
  while out[-1] < hi:
    octave = 1 << max(out[-1].bit_length() - 1, 0)
    out.append(min(hi, out[-1] + max(octave // steps, 1)))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class PairRows:
  """Padded model rows for one scoring call plus where each row's score goes.

  Cross mode: row r scores the ordered pair (group_P[r], first_P[r], second_P[r]).
  Bi mode: row r embeds window second_P[r] of answer (group_P[r], first_P[r]).
  Padding rows have valid_P False and point at (0, 0, 0).
  """

  input_ids_PxL: np.ndarray  # int32
  attention_mask_PxL: np.ndarray  # int32, 1 on real tokens
  token_type_ids_PxL: np.ndarray  # int32 segment ids (all 0 where the family has none)
  group_P: np.ndarray  # int32
  first_P: np.ndarray  # int32
  second_P: np.ndarray  # int32
  valid_P: np.ndarray  # bool
  rule_applies_BxGxG: np.ndarray  # bool: the short rule decides this pair
  rule_equivalent_BxGxG: np.ndarray  # bool: its verdict
  # Bi mode: each scored answer's first `bag_tokens` token ids (no special tokens), for the
  # lexical features; answer a sits at (bag_group_A[a], bag_answer_A[a]). Cross mode: [1, 1] zeros.
  bag_ids_AxT: np.ndarray  # int32
  bag_mask_AxT: np.ndarray  # int32, 1 on real tokens (all 0 on padding answers)
  bag_group_A: np.ndarray  # int32
  bag_answer_A: np.ndarray  # int32

  @property
  def num_real(self) -> int:
    return int(self.valid_P.sum())


def _check_groups(groups: Sequence[Sequence[str]]) -> tuple[int, int]:
  if not groups:
    raise InputError("groups", "no groups given")
  g = len(groups[0])
  if g < 2:
    raise InputError("groups", f"each group needs >= 2 answers to form pairs, got {g}")
  for b, grp in enumerate(groups):
    if len(grp) != g:
      raise InputError(f"groups[{b}]", f"has {len(grp)} answers, groups[0] has {g}")
    for i, t in enumerate(grp):
      if not isinstance(t, str):
        raise InputError(f"groups[{b}][{i}]", f"must be a string, got {type(t).__name__}")
  return len(groups), g


def _pad_rows(rows: list[list[int]], types: list[list[int]], num_rows: int, length: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  ids = np.full((num_rows, length), pad_id, np.int32)
  mask = np.zeros((num_rows, length), np.int32)
  tt = np.zeros((num_rows, length), np.int32)
  for r, (row, ty) in enumerate(zip(rows, types)):
    ids[r, : len(row)] = row
    mask[r, : len(row)] = 1
    tt[r, : len(ty)] = ty
  if num_rows > len(rows):
    # Padding rows hold one [PAD] with mask 1, so no softmax row is all -inf; they are discarded.
    mask[len(rows):, 0] = 1
  return ids, mask, tt


def build_rows(
    groups: Sequence[Sequence[str]],
    tokenizer: EncoderTokenizer,
    *,
    cross: bool,
    max_tokens: int,
    symmetric: bool,
    short_rule_words: int | None,
    row_buckets: Sequence[int],
    length_buckets: Sequence[int],
    row_multiple: int = 1,
    windows: int = 1,
    bag_tokens: int = 0,
    max_words: int | None = None,
    pair_tokens: int | None = None,
) -> PairRows:
  """Tokenises B groups of G answers into the padded rows one jitted scoring call consumes.

  Args:
    groups: B groups, each a list of G answer strings (the prompt is not part of the input).
    tokenizer: the encoder's tokenizer.
    cross: cross-encoder pair rows (True) or bi-encoder answer rows (False).
    max_tokens: per-answer truncation, in tokens.
    symmetric: cross mode only: also score (j, i), the caller averages the two orders.
    short_rule_words: apply the short-answer rule when both answers have at most this many words;
      None disables it.
    row_buckets / length_buckets: allowed padded row counts / row lengths.
    row_multiple: the padded row count is also a multiple of this (the scorer's micro-batch).
    windows: bi mode: each answer contributes up to this many rows, consecutive windows of
      `max_tokens` tokens (the scorer averages their embeddings).
    bag_tokens: bi mode: tokens per answer in its lexical bag (0: bags hold no tokens).
    max_words: each answer is first cut to this many whitespace words (None: no word cut).
    pair_tokens: cross mode: a row keeps at most this many answer tokens, longest first.
  """
  B, G = _check_groups(groups)
  if short_rule_words is None:
    applies = np.zeros((B, G, G), bool)
    verdict = np.zeros((B, G, G), bool)
  else:
    applies, verdict = short_rule_matrix(groups, short_rule_words)
  iu, ju = np.triu_indices(G, k=1)
  needed = [(b, i, j) for b in range(B) for i, j in zip(iu, ju) if not applies[b, i, j]]
  flat = [cut_words(t, max_words) for grp in groups for t in grp]
  if cross:
    ids = tokenizer.encode(flat, max_tokens)
    rows, types, where = [], [], []
    for b, i, j in needed:
      orders = ((i, j), (j, i)) if symmetric else ((i, j),)
      for x, y in orders:
        a, c = ids[b * G + x], ids[b * G + y]
        if pair_tokens is not None:
          na, nc = longest_first(len(a), len(c), pair_tokens)
          a, c = a[:na], c[:nc]
        r, t = tokenizer.pair(a, c)
        rows.append(r)
        types.append(t if tokenizer.uses_token_type_ids else [0] * len(t))
        where.append((b, x, y))
  else:
    answers = sorted({(b, i) for b, i, j in needed} | {(b, j) for b, i, j in needed})
    texts = [flat[b * G + i] for b, i in answers]
    ids = tokenizer.encode(texts, max(max_tokens * windows, bag_tokens)) if answers else []
    rows, where = [], []
    for (b, i), x in zip(answers, ids):
      x = x[:max_tokens * windows]
      # Consecutive windows of max_tokens; an empty answer still gets one ([CLS] [SEP]) row.
      for w in range(max(1, -(-len(x) // max_tokens))):
        rows.append(tokenizer.single(x[w * max_tokens:(w + 1) * max_tokens]))
        where.append((b, i, w))
    types = [[0] * len(r) for r in rows]
  num_rows = bucket(max(len(rows), 1), row_buckets)
  num_rows = -(-num_rows // row_multiple) * row_multiple
  length = bucket(max((len(r) for r in rows), default=1), length_buckets)
  input_ids, mask, tt = _pad_rows(rows, types, num_rows, length, tokenizer.pad_id)
  if cross or not answers:
    bag_ids = np.zeros((1, 1), np.int32)
    bag_mask, bag_loc = np.zeros((1, 1), np.int32), np.zeros((1, 2), np.int32)
  else:
    bags = [x[:bag_tokens] for x in ids]
    num_answers = bucket(len(bags), row_buckets)
    bag_len = bucket(max(max(map(len, bags)), 1), geometric_buckets(16, max(bag_tokens, 16)))
    bag_ids, bag_mask, _ = _pad_rows(bags, bags, num_answers, bag_len, tokenizer.pad_id)
    bag_mask[len(bags):] = 0  # padding answers contribute nothing
    bag_loc = np.zeros((num_answers, 2), np.int32)
    bag_loc[: len(answers)] = np.asarray(answers, np.int32)
  loc = np.zeros((num_rows, 3), np.int32)
  if where:
    loc[: len(where)] = np.asarray(where, np.int32)
  valid = np.zeros(num_rows, bool)
  valid[: len(where)] = True
  return PairRows(input_ids, mask, tt, loc[:, 0], loc[:, 1], loc[:, 2], valid, applies, verdict,
                  bag_ids, bag_mask, bag_loc[:, 0], bag_loc[:, 1])
