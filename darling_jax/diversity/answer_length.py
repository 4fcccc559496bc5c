"""How much of each answer the pair classifier reads: whitespace words, tokens, the pair budget.

The reference (DARLING) cuts each answer to its first (max_len - 3) // 2 whitespace words, with
max_len the classifier's maximum input length, and lets the tokenizer truncate the pair row to
max_len tokens ("longest first"); NoveltyBench's DeBERTa instead cuts each answer to its first 128
tokens on its own. Both are expressible here:

  answer_max_tokens = k       each answer keeps its first k tokens (2k + overhead <= max_len);
  answer_max_words = w        each answer keeps its first w words (2w + overhead <= max_len), then
                              the pair keeps max_len - overhead tokens, longest first;
  neither (the default)       w = (max_len - 3) // 2 in cross mode; bi mode reads its windows
                              (`max_tokens` each) as trained, with no word cut.

A word cut keeps the text verbatim up to the end of its w-th word (no whitespace rewriting), so an
answer with at most w words is untouched. max_len is `classifier.max_length`, default
min(encoder positions, DEFAULT_MAX_LENGTH). A setting the encoder cannot hold is an InputError
naming the field, raised when the scorer is built, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import re

from darling_jax.errors import InputError

DEFAULT_MAX_LENGTH = 2048  # the reference's ModernBERT input length: 1,022 words per answer

_WORD_END = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class AnswerCut:
  """The resolved per-answer cut for one classifier (see the module docstring)."""

  words: int | None  # whitespace words kept per answer; None: no word cut
  tokens: int  # tokens kept per answer on its own (cross) / per window (bi)
  pair_tokens: int | None  # cross: both answers' tokens together, longest first; None: no joint cut

  def longest_row(self, cross: bool, overhead: int, windows: int = 1) -> int:
    """The longest row the scorer can build: the top of its length buckets."""
    del windows  # bi rows are one window each
    if not cross:
      return self.tokens + 2
    return (self.pair_tokens if self.pair_tokens is not None else 2 * self.tokens) + overhead


def cut_words(text: str, words: int | None) -> str:
  """`text` up to the end of its `words`-th whitespace word (unchanged if it has no more)."""
  if words is None:
    return text
  if words <= 0:
    return ""
  for k, m in enumerate(_WORD_END.finditer(text), 1):
    if k == words:
      return text[:m.end()]
  return text


def longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Kept lengths of a pair truncated to `budget` tokens, HF tokenizers' "longest_first" rule.

  The shorter answer is kept whole when it fits in half the budget and the longer gets the rest;
  otherwise each gets half (the longer one, or the second on a tie, the odd token).
  """
  if len_a + len_b <= budget:
    return len_a, len_b
  swap = len_a > len_b
  n1, n2 = (len_b, len_a) if swap else (len_a, len_b)
  n2 = n1 if n1 > budget else max(n1, budget - n1)
  if n1 + n2 > budget:
    n1, n2 = budget // 2, budget // 2 + budget % 2
  n1, n2 = (n2, n1) if swap else (n1, n2)
  return min(len_a, n1), min(len_b, n2)


def resolve(*, cross: bool, max_positions: int, pair_overhead: int, window_tokens: int,
            max_length: int | None = None, answer_max_words: int | None = None,
            answer_max_tokens: int | None = None, source: str = "classifier") -> AnswerCut:
  """The AnswerCut of a classifier whose encoder holds `max_positions` tokens.

  Args:
    cross: cross mode (one pair row) or bi mode (one row per answer window).
    max_positions: the encoder's max_position_embeddings.
    pair_overhead: special tokens of a pair row (3 for `[CLS] a [SEP] b [SEP]`).
    window_tokens: bi mode: the classifier's trained window (`max_tokens`).
    max_length, answer_max_words, answer_max_tokens: the settings (see the module docstring).
    source: where the settings came from, for error messages: "classifier" (classifier.json),
      "diversity" (a run's config) or "--" (command-line flags).

  Raises:
    InputError: a setting below 1, or one whose rows the encoder cannot hold.
  """
  def name(field: str) -> str:
    return f"--{field.replace('_', '-')}" if source == "--" else f"{source}.{field}"

  for field, v in (("max_length", max_length), ("answer_max_words", answer_max_words),
                   ("answer_max_tokens", answer_max_tokens)):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise InputError(name(field), f"must be a positive integer or unset, got {v!r}")
  if max_length is not None and max_length > max_positions:
    raise InputError(name("max_length"), f"{max_length} exceeds the encoder's "
                     f"{max_positions} positions")
  if not cross:
    tokens = answer_max_tokens or window_tokens
    if tokens + 2 > max_positions:
      # The window is the folder's own max_tokens unless the caller overrode it.
      where = name("answer_max_tokens") if answer_max_tokens else "classifier.max_tokens"
      raise InputError(where, f"a {tokens}-token window plus [CLS]/[SEP] exceeds the "
                       f"encoder's {max_positions} positions")
    return AnswerCut(words=answer_max_words, tokens=tokens, pair_tokens=None)
  max_len = max_length or min(max_positions, DEFAULT_MAX_LENGTH)
  if answer_max_tokens is not None:
    if 2 * answer_max_tokens + pair_overhead > max_len:
      raise InputError(name("answer_max_tokens"), f"two answers of {answer_max_tokens} tokens "
                       f"plus {pair_overhead} special tokens exceed the classifier's {max_len} "
                       f"positions (at most {(max_len - pair_overhead) // 2})")
    return AnswerCut(words=answer_max_words, tokens=answer_max_tokens, pair_tokens=None)
  words = answer_max_words if answer_max_words is not None else (max_len - 3) // 2
  if 2 * words + pair_overhead > max_len:
    raise InputError(name("answer_max_words"), f"two answers of {words} words (>= 1 token "
                     f"each) plus {pair_overhead} special tokens exceed the classifier's "
                     f"{max_len} positions (at most {(max_len - pair_overhead) // 2})")
  return AnswerCut(words=words, tokens=max_len - pair_overhead, pair_tokens=max_len - pair_overhead)
