"""Host-side text helpers around the sampler: encode + left-pad + bucket prompts, decode rollouts.

Prompt lengths are bucketed (powers of two up to 64, then multiples of 64) and batches padded to a
fixed size, so a stream of requests compiles the sampler only a handful of times.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.sampler import Rollouts, sample_model
from darling_jax.tokenization.tokenizer import Tokenizer


def bucket_length(n: int, minimum: int = 8) -> int:
  """The padded length for an n-token prompt: a power of two up to 64, then a multiple of 64."""
  if n <= 64:
    return max(minimum, 1 << max(n - 1, 0).bit_length())
  return -(-n // 64) * 64


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to `length` (default: the longest one's bucket) -> ids, mask [B, P]."""
  if not seqs:
    raise InputError("prompts", "no prompts given")
  for i, s in enumerate(seqs):
    if len(s) == 0:
      raise InputError(f"prompts[{i}]", "is empty after tokenization")
  longest = max(len(s) for s in seqs)
  length = bucket_length(longest) if length is None else length
  if length < longest:
    raise InputError("prompts", f"longest prompt has {longest} tokens, more than length={length}")
  ids = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    ids[i, length - len(s):] = np.asarray(s, np.int32)
    mask[i, length - len(s):] = True
  return ids, mask


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str],
                   chat: bool = False) -> list[list[int]]:
  """Token ids per prompt: the chat template's rendering of one user turn, or the raw text with the
  checkpoint's own special tokens (BOS where it asks for one)."""
  if chat:
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True))
            for p in prompts]
  return tokenizer.encode_batch(list(prompts), add_special_tokens=True)


def completion_ids(tokens: np.ndarray, length: int, stop_ids: Sequence[int]) -> list[int]:
  """A rollout's ids up to its length, without the final stop token."""
  out = [int(t) for t in tokens[:length]]
  if out and out[-1] in stop_ids:
    out.pop()
  return out


def decode_rollouts(tokenizer: Tokenizer, rollouts: Rollouts,
                    stop_ids: Sequence[int]) -> list[list[str]]:
  """[B][G] completion texts (special tokens dropped, nothing after the stop token)."""
  tokens, lengths = np.asarray(rollouts.tokens), np.asarray(rollouts.lengths)
  return [[tokenizer.decode(completion_ids(tokens[b, g], int(lengths[b, g]), stop_ids))
           for g in range(tokens.shape[1])] for b in range(tokens.shape[0])]


def stop_ids_for(model: Decoder, tokenizer: Tokenizer) -> tuple[int, ...]:
  """The tokenizer's EOS ids plus the model config's, in order, deduplicated."""
  return tuple(dict.fromkeys((*tokenizer.eos_token_ids, *model.config.eos_token_ids)))


def generate_texts(
    model: Decoder,
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    greedy: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    chat: bool = False,
    cache_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> list[list[str]]:
  """num_samples completions for each prompt: out[i][j] is sample j of prompts[i].

  Prompts go through the sampler `batch_size` at a time (the last batch padded with repeats, so
  every batch has one compiled shape); batch i uses the key fold_in(key(seed), i). `chat` wraps each
  prompt in the tokenizer's chat template as one user turn. `cache_dtype` defaults to the model's
  compute dtype.
  """
  if batch_size < 1:
    raise InputError("batch_size", f"must be >= 1, got {batch_size}")
  if not prompts:
    return []
  cache_dtype = cache_dtype or np.dtype(model.dtype).name
  stop = stop_ids_for(model, tokenizer)
  cfg = SamplerConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, min_p=min_p, greedy=greedy, stop_ids=stop,
                      num_samples=num_samples, cache_dtype=cache_dtype)
  encoded = encode_prompts(tokenizer, prompts, chat=chat)
  # Fewer prompts than a batch: the smallest power of two holding them, not a mostly empty batch.
  rows = min(batch_size, 1 << (len(encoded) - 1).bit_length())
  key = jax.random.key(seed)
  out: list[list[str]] = []
  for i, start in enumerate(range(0, len(encoded), rows)):
    chunk = encoded[start:start + rows]
    ids, mask = left_pad(chunk + [chunk[0]] * (rows - len(chunk)), tokenizer.pad_token_id)
    rollouts = sample_model(model, ids, mask, jax.random.fold_in(key, i), cfg,
                            pad_id=tokenizer.pad_token_id, mesh=mesh)
    out.extend(decode_rollouts(tokenizer, rollouts, stop)[:len(chunk)])
  return out
