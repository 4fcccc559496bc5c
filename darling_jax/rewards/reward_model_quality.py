"""A neural reward model as a DARLING quality function: q[b, g] = RM(prompt_b, completion_bg).

Axis letters: B prompts, G completions per prompt, N = B*G sequences, R rows of one device call,
T bucket length.

The paper's chat quality is Athene-RM-8B (a Llama-3 with a scalar head; unbounded, can be negative).
Any `RewardModel` (darling_jax.models.reward_model) works. One call scores all B*G pairs:

1. Render (host). Each pair becomes the reward model's chat: `[{"role": "user", "content": prompt},
   {"role": "assistant", "content": completion}]` through the tokenizer's chat template with
   add_generation_prompt=False, as HF reward-model pipelines do. Without a template the text is
   `prompt + separator + completion`. A CLS-pooled model (Athene) gets its CLS id appended.
   Tokens: `add_special_tokens` None means "as the reference RL path does": False after a chat
   template (`apply_chat_template(tokenize=True)` adds none; Llama-3's template writes its own
   BOS, so there is exactly one), True without one (`tokenizer(text)`). Athene included: its model
   card's pipeline tokenises `template_text + cls_token` with special tokens (a doubled BOS), but
   the DARLING reference scores RL rollouts from the templated ids, with one BOS; set
   `add_special_tokens=True` to reproduce the model card.
2. Untrusted text. Completions (and prompts) are model/user text: never evaluated, and by default
   every special token string of the tokenizer (`<|eot_id|>`, `<|im_start|>`, a CLS, ...) is
   replaced by a space before rendering, so a completion cannot close its own turn, forge a new
   one or plant the token the head reads. HF pipelines do not do this; `strip_special_tokens=False`
   reproduces them exactly. Lone surrogates (not encodable as UTF-8) become '?'.
3. Truncation to `max_length` tokens. HF's pipeline truncates the whole templated sequence on the
   right: that drops the end-of-turn tokens the head was trained to read (and Athene's CLS, which
   crashes its code). Instead we shorten the CONTENTS and keep the template around them intact:
   the completion keeps its START (what right truncation keeps), the prompt keeps its END (the
   request nearest the answer; chat history is cut from the left). When both are long the prompt
   keeps `prompt_fraction` of the content budget. The cut is made at token granularity, and the
   shortened texts are re-rendered (their boundary tokens may merge differently; a bounded retry
   loop absorbs that). Before tokenising, each text is cut to `8 * max_length` characters, and
   only if that cut text fits is more read, up to `16 * max_length` characters (natural text and
   code average 3-5 characters per token): a huge or degenerate string (1e7 characters, a
   whitespace run of 64-space tokens) costs bounded host time, at worst a shorter content than
   the budget allows. Sequences that fit are tokenised exactly as HF would.
4. Score (device). Sequences are right-padded into the smallest of a few static lengths
   (`bucket_lengths` + max_length), rows padded to a multiple of the batch-shard count times a
   power of two (few compiled shapes), and each bucket runs in one jitted call with the params
   sharded on `mesh` by `rules` and the rows over the mesh axes of the logical "batch" axis
   ("data", "fsdp" in the default rules). Calls of all buckets are dispatched before any result
   is fetched. The result is head column `label_index`, float32 [B, G].
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jaxtyping import Float

from darling_jax.errors import InputError
from darling_jax.models.reward_model import Pooling, RewardModel
from darling_jax.rewards.protocol import check_batch, prompt_text
from darling_jax.sharding.mesh import single_device_mesh
from darling_jax.sharding.rules import (
    DEFAULT_RULES, LogicalRules, activation_sharding, logical_to_spec, state_shardings)
from darling_jax.tokenization.tokenizer import Tokenizer

_log = logging.getLogger(__name__)

# Characters read per token of budget before tokenising: the first try (natural text and code
# average 3-5) and the ceiling (bounds the host time of a degenerate completion, e.g. whitespace).
_FIRST_CHARS_PER_TOKEN = 8
_MAX_CHARS_PER_TOKEN = 16
_FIT_RETRIES = 4


@dataclasses.dataclass(frozen=True)
class RewardModelQualityConfig:
  """How pairs are rendered, truncated and batched (see the module docstring)."""

  max_length: int = 4096  # tokens per sequence (Athene's pipeline uses 4096)
  bucket_lengths: tuple[int, ...] = (256, 512, 1024, 2048)  # static shapes below max_length
  label_index: int = 0  # head column returned as the score
  prompt_fraction: float = 0.5  # content budget share a long prompt keeps beside a long completion
  separator: str = "\n"  # between prompt and completion when there is no chat template
  add_special_tokens: bool | None = None  # None: as the reference pipeline (module docstring)
  strip_special_tokens: bool = True  # replace special token strings in untrusted text
  max_rows_per_call: int | None = None  # rows of one device call (memory; rounded down to a
                                        # power of two times the batch shards); None: no cap
  min_rows_per_call: int = 8  # small calls are padded up to this: fewer compiled shapes

  def __post_init__(self):
    if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) \
        or self.max_length < 2:
      raise InputError("max_length", f"must be an integer >= 2, got {self.max_length!r}")
    for b in self.bucket_lengths:
      if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise InputError("bucket_lengths", f"must be positive integers, got {b!r}")
    if isinstance(self.label_index, bool) or not isinstance(self.label_index, int) \
        or self.label_index < 0:
      raise InputError("label_index", f"must be a non-negative integer, got {self.label_index!r}")
    if not 0.0 <= self.prompt_fraction <= 1.0:
      raise InputError("prompt_fraction", f"must be in [0, 1], got {self.prompt_fraction!r}")
    if isinstance(self.min_rows_per_call, bool) or not isinstance(self.min_rows_per_call, int) \
        or self.min_rows_per_call < 1:
      raise InputError("min_rows_per_call", f"must be a positive integer, got "
                       f"{self.min_rows_per_call!r}")
    if self.max_rows_per_call is not None and (
        isinstance(self.max_rows_per_call, bool) or not isinstance(self.max_rows_per_call, int)
        or self.max_rows_per_call < 1):
      raise InputError("max_rows_per_call", f"must be a positive integer or None, got "
                       f"{self.max_rows_per_call!r}")

  @property
  def buckets(self) -> tuple[int, ...]:
    shorter = {b for b in self.bucket_lengths if b < self.max_length}
    return tuple(sorted(shorter | {self.max_length}))


def split_budget(n_prompt: int, n_completion: int, budget: int,
                 prompt_fraction: float) -> tuple[int, int]:
  """Tokens (prompt, completion) kept from contents of n_prompt and n_completion tokens.

  Nothing is cut when both fit; otherwise the prompt keeps what the completion leaves, but at
  least floor(prompt_fraction * budget) tokens when it is that long, and the completion the rest.
  """
  budget = max(budget, 0)
  if n_prompt + n_completion <= budget:
    return n_prompt, n_completion
  keep_p = min(n_prompt, max(budget - n_completion, int(budget * prompt_fraction)))
  return keep_p, budget - keep_p


def _special_strings(tokenizer: Tokenizer) -> tuple[str, ...]:
  """Strings the tokenizer turns into special tokens wherever they appear in text."""
  backend = tokenizer._backend  # pylint: disable=protected-access
  added = getattr(backend, "get_added_tokens_decoder", None)  # HF `tokenizers` only
  if not callable(added):  # sentencepiece never parses control tokens out of text
    return ()
  return tuple(sorted({t.content for t in added().values() if t.special and t.content},
                      key=lambda s: (-len(s), s)))


def _next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


class RewardModelQuality:
  """QualityFn scoring each (prompt, completion) with a reward model; float32 [B, G].

  Args:
    model: the reward model (its params may already be sharded; they are moved to `mesh`).
    tokenizer: the reward model's tokenizer (its chat template renders the pairs).
    config: rendering/truncation/batching options.
    mesh: where to run (default: the mesh the params live on, else one device).
    rules: logical -> mesh axes for params and the "batch" axis of the rows.
    name: used in logs and error messages.
  """

  def __init__(
      self,
      model: RewardModel,
      tokenizer: Tokenizer,
      config: RewardModelQualityConfig = RewardModelQualityConfig(),
      *,
      mesh: Mesh | None = None,
      rules: LogicalRules = DEFAULT_RULES,
      name: str = "reward_model",
  ):
    self.config = config
    self.name = name
    self.tokenizer = tokenizer
    rm_cfg = model.config
    if config.label_index >= rm_cfg.num_labels:
      raise InputError("label_index", f"{config.label_index} is out of range: the model has "
                       f"{rm_cfg.num_labels} label(s) {list(rm_cfg.labels)}")
    self._cls_id = rm_cfg.cls_token_id if rm_cfg.pooling is Pooling.LAST_CLS else None
    self._pad_id = (rm_cfg.pad_token_id if rm_cfg.pad_token_id is not None
                    else tokenizer.pad_token_id)
    if self._cls_id is not None and self._pad_id == self._cls_id:
      raise InputError("pad_token_id", f"equals the CLS id {self._cls_id} the head reads")
    self._template = tokenizer.chat_template or None
    self._vocab_size = rm_cfg.decoder.vocab_size
    add = config.add_special_tokens
    self._add_special = add if add is not None else self._template is None
    specials = _special_strings(tokenizer) if config.strip_special_tokens else ()
    self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
    self._special_prefixes = tuple({s[:2] for s in specials})
    # A replacement character that is in no special string cannot create a new match.
    self._replacement = next(ch for ch in (" ", "\n", "\ufffd", "") if
                             not any(ch and ch in s for s in specials))
    if config.max_length > rm_cfg.decoder.max_position_embeddings:
      _log.warning("%s: max_length %d exceeds the model's max_position_embeddings %d",
                   name, config.max_length, rm_cfg.decoder.max_position_embeddings)
    overhead = len(self._ids(self._render("", "")))
    if overhead >= config.max_length:
      raise InputError("max_length", f"{config.max_length} leaves no room for text: the template "
                       f"alone is {overhead} tokens")

    graphdef, state = nnx.split(model)
    if mesh is None:
      leaf = jax.tree.leaves(state)[0]
      mesh = leaf.sharding.mesh if isinstance(leaf.sharding, NamedSharding) else None
    self.mesh = mesh or single_device_mesh()
    self._state = jax.device_put(state, state_shardings(state, self.mesh, rules))
    rows_spec = logical_to_spec(("batch",), rules, self.mesh)
    axes = [a for part in rows_spec if part is not None
            for a in ((part,) if isinstance(part, str) else part)]
    self._row_multiple = math.prod(self.mesh.shape[a] for a in axes)
    self._graphdef = graphdef
    self._tokens_sharding = activation_sharding(self.mesh, rules, "batch", "length")

  @classmethod
  def from_pretrained(
      cls,
      path: str,
      *,
      dtype: str = "bfloat16",
      mesh: Mesh | None = None,
      rules: LogicalRules = DEFAULT_RULES,
      cls_token_id: int | None = None,
      name: str = "reward_model",
      **options: Any,
  ) -> "RewardModelQuality":
    """Loads a HF reward-model folder and its tokenizer (the `BUILTINS["reward_model"]` entry).

    Args:
      path: the model folder (config.json, safetensors, tokenizer files).
      dtype: params and activations, "bfloat16" (default, as reward models are served) or
        "float32"; the head always runs in float32.
      mesh, rules: sharding (default: one device, DEFAULT_RULES).
      cls_token_id: CLS id of an Athene-style v_head checkpoint (default: its tokenizer's).
      name: the function's name in logs.
      **options: fields of `RewardModelQualityConfig` (max_length=..., label_index=...).
    """
    from darling_jax.models.reward_model import load_reward_model
    from darling_jax.tokenization.tokenizer import load_hf_tokenizer

    fields = {f.name for f in dataclasses.fields(RewardModelQualityConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
      raise InputError("reward_model", f"unknown option(s) {unknown}; known: {sorted(fields)}")
    config = RewardModelQualityConfig(**options)
    dtypes = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
    if dtype not in dtypes:
      raise InputError("reward_model dtype", f"{dtype!r} is not one of {sorted(dtypes)}")
    dt = dtypes[dtype]
    model = load_reward_model(path, param_dtype=dt, dtype=dt, mesh=mesh, rules=rules,
                              cls_token_id=cls_token_id)
    return cls(model, load_hf_tokenizer(path), config, mesh=mesh, rules=rules, name=name)

  # ---- host side: text -> token ids --------------------------------------------------------------

  def _render(self, prompt: str, completion: str) -> str:
    if self._template is None:
      return prompt + self.config.separator + completion
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return self.tokenizer.apply_chat_template(messages, add_generation_prompt=False)

  def _ids(self, text: str) -> list[int]:
    ids = self.tokenizer.encode(text, add_special_tokens=self._add_special)
    return ids + [self._cls_id] if self._cls_id is not None else ids

  def _clean(self, text: str) -> str:
    """Untrusted text made safe to tokenise: UTF-8 encodable, no special token strings."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if self._special_re is not None and any(p in text for p in self._special_prefixes):
      text = self._special_re.sub(self._replacement, text)
    return text

  def _cut(self, prompt: str, completion: str, chars: int) -> tuple[str, str, bool]:
    """Prompt's last and completion's first `chars` characters, cleaned; and whether cut."""
    p, c = prompt[-chars:], completion[:chars]
    return self._clean(p), self._clean(c), len(p) < len(prompt) or len(c) < len(completion)

  def encode_pair(self, prompt: str, completion: str) -> list[int]:
    """Token ids (<= max_length) the reward model reads for one pair."""
    chars = _FIRST_CHARS_PER_TOKEN * self.config.max_length
    p, c, was_cut = self._cut(prompt, completion, chars)
    return self._fit(prompt, completion, chars, p, c, was_cut, self._ids(self._render(p, c)))

  def _fit(self, prompt: str, completion: str, chars: int, p: str, c: str, was_cut: bool,
           ids: list[int]) -> list[int]:
    """Finishes a pair whose first `chars`-character cut (p, c) tokenised to `ids`."""
    L = self.config.max_length
    # Dropped characters might have fit: read more, up to the ceiling.
    while was_cut and len(ids) <= L and chars < _MAX_CHARS_PER_TOKEN * L:
      chars = min(2 * chars, _MAX_CHARS_PER_TOKEN * L)
      p, c, was_cut = self._cut(prompt, completion, chars)
      ids = self._ids(self._render(p, c))
    return ids if len(ids) <= L else self._truncate(p, c, len(ids))

  def _truncate(self, prompt: str, completion: str, n_full: int) -> list[int]:
    L = self.config.max_length
    tok = self.tokenizer
    p_ids, c_ids = tok.encode(prompt), tok.encode(completion)
    budget = L - (n_full - len(p_ids) - len(c_ids))  # minus the template's own tokens
    ids: list[int] = []
    for _ in range(_FIT_RETRIES):
      keep_p, keep_c = split_budget(len(p_ids), len(c_ids), budget, self.config.prompt_fraction)
      # A cut through a multi-byte character decodes to U+FFFD at the cut: drop it.
      p = prompt if keep_p >= len(p_ids) else self._clean(
          tok.decode(p_ids[len(p_ids) - keep_p:], skip_special_tokens=False).lstrip("\ufffd")
          if keep_p else "")
      c = completion if keep_c >= len(c_ids) else self._clean(
          tok.decode(c_ids[:keep_c], skip_special_tokens=False).rstrip("\ufffd"))
      ids = self._ids(self._render(p, c))
      if len(ids) <= L:
        return ids
      budget -= len(ids) - L
    _log.warning("%s: could not fit a pair into %d tokens by shortening its texts; cutting ids",
                 self.name, L)
    return ids[:L - 1] + ids[-1:]  # keep the last token: usually the one the head reads

  def encode_batch(self, prompts: Sequence[str],
                   completions: Sequence[Sequence[str]]) -> list[list[int]]:
    """Ids of every pair in row-major [B][G] order."""
    L = self.config.max_length
    chars = _FIRST_CHARS_PER_TOKEN * L
    pairs = [(p, c) for p, group in zip(prompts, completions) for c in group]
    cuts = [self._cut(p, c, chars) for p, c in pairs]
    texts = [self._render(p, c) for p, c, _ in cuts]
    encoded = self.tokenizer.encode_batch(texts, add_special_tokens=self._add_special)
    out = []
    for (prompt, completion), (p, c, was_cut), ids in zip(pairs, cuts, encoded):
      if self._cls_id is not None:
        ids = ids + [self._cls_id]
      out.append(self._fit(prompt, completion, chars, p, c, was_cut, ids)
                 if was_cut or len(ids) > L else ids)
    return out

  # ---- device side -------------------------------------------------------------------------------

  def score_ids(self, ids: Sequence[Sequence[int]]) -> Float[np.ndarray, "N"]:
    """Scores of token sequences (each <= max_length), one jitted call per bucket (and chunk)."""
    buckets = self.config.buckets
    by_bucket: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
      if not 0 < len(seq) <= buckets[-1]:
        raise InputError(f"{self.name} sequence {i}", f"has {len(seq)} tokens; expected 1.."
                         f"{buckets[-1]}")
      by_bucket.setdefault(next(b for b in buckets if b >= len(seq)), []).append(i)
    cap = self.config.max_rows_per_call
    if cap is not None:  # the largest padded row count (multiple x power of two) within the cap
      cap = self._row_multiple * (1 << max(cap // self._row_multiple, 1).bit_length() - 1)
    pending = []
    for T, rows in sorted(by_bucket.items()):
      step = len(rows) if cap is None else cap
      for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        rows_wanted = max(len(chunk), self.config.min_rows_per_call)
        R = self._row_multiple * _next_pow2(-(-rows_wanted // self._row_multiple))
        R = R if cap is None else min(R, cap)
        ids_RxT = np.full((R, T), self._pad_id, np.int32)
        mask_RxT = np.zeros((R, T), np.int32)
        for r, i in enumerate(chunk):
          ids_RxT[r, :len(ids[i])] = ids[i]
          mask_RxT[r, :len(ids[i])] = 1
        # Out-of-range ids would gather NaN embeddings: a tokenizer/model mismatch, say so.
        if ids_RxT.min() < 0 or ids_RxT.max() >= self._vocab_size:
          raise InputError(self.name, f"token ids outside the model's vocabulary [0, "
                           f"{self._vocab_size}): is the tokenizer the reward model's own?")
        out_R = _score_rows(self._graphdef, self.config.label_index, self._state,
                            jax.device_put(ids_RxT, self._tokens_sharding),
                            jax.device_put(mask_RxT, self._tokens_sharding))
        pending.append((chunk, out_R))  # dispatched; fetched below, after every bucket is queued
    scores_N = np.zeros((len(ids),), np.float32)
    for chunk, out_R in pending:
      scores_N[chunk] = np.asarray(jax.device_get(out_R))[:len(chunk)]
    return scores_N

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Sequence[str]],
      columns: Mapping[str, Sequence[Any]],
  ) -> Float[np.ndarray, "B G"]:
    """Reward-model scores of every completion, float32 [B, G] (unbounded, may be negative)."""
    del columns  # the reward model sees only the conversation
    B, G = check_batch(prompts, completions, {})
    if B * G == 0:
      return np.zeros((B, G), np.float32)
    # A chat-message prompt becomes its text (prompt_text): its truncation keeps the text's end.
    prompts = [prompt_text(p) for p in prompts]
    scores_N = self.score_ids(self.encode_batch(prompts, completions))
    return scores_N.reshape(B, G)

  def close(self) -> None:
    """Releases the device copy of the params; the object cannot score afterwards."""
    self._state = None


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score_rows(graphdef, label: int, state, ids_RxT, mask_RxT):
  # Shardings come from the committed inputs (params placed by rules, rows over "batch"); module
  # level, so reward models of one architecture share compiled programs.
  return nnx.merge(graphdef, state).scores(ids_RxT, mask_RxT)[:, label]


__all__ = ["RewardModelQuality", "RewardModelQualityConfig", "split_budget"]
