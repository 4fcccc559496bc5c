"""`SamplerConfig`: what one compiled rollout function does (static: a change recompiles)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from darling_jax.errors import InputError

CACHE_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Controls of the rollout sampler.

  The token distribution at each step is the model's softmax over `logits / temperature`, then
  restricted (in this order, as transformers' `generate` does) to the `top_k` most likely tokens,
  the smallest set whose probability reaches `top_p`, and the tokens with probability at least
  `min_p * max_prob`; the survivors are renormalised. `greedy` takes the argmax of the raw logits.

  Attributes:
    max_new_tokens: T, the generated length per rollout (including a stop token, if any).
    temperature: divides the logits; must be > 0 (use `greedy` for the T -> 0 limit).
    top_k: keep the k most likely tokens (0: off).
    top_p: nucleus mass in (0, 1] (1: off).
    min_p: keep tokens with p >= min_p * p_max, in [0, 1) (0: off).
    greedy: argmax decoding; the filters and temperature are ignored.
    stop_ids: a row stops after emitting any of these ids (kept in the output, then padding).
    num_samples: G, rollouts per prompt; they share the prompt's KV cache.
    cache_dtype: dtype name of the KV cache ("bfloat16", "float32", "float16").
    stop_check_every: decode steps between checks that every row has stopped (the loop's early
      exit, a reduction over all rows and devices); the output is the same for any value.
  """

  max_new_tokens: int = 256
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  greedy: bool = False
  stop_ids: tuple[int, ...] = ()
  num_samples: int = 1
  cache_dtype: str = "bfloat16"
  stop_check_every: int = 1

  def __post_init__(self):
    # Tuples keep the config hashable: it is a static argument of the jitted sampler.
    object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))
    if self.max_new_tokens < 1:
      raise InputError("sampler.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
    if not self.temperature > 0:
      raise InputError("sampler.temperature",
                       f"must be > 0 (use greedy=True for argmax), got {self.temperature}")
    if self.top_k < 0:
      raise InputError("sampler.top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise InputError("sampler.top_p", f"must be in (0, 1], got {self.top_p}")
    if not 0 <= self.min_p < 1:
      raise InputError("sampler.min_p", f"must be in [0, 1), got {self.min_p}")
    if self.num_samples < 1:
      raise InputError("sampler.num_samples", f"must be >= 1, got {self.num_samples}")
    if any(i < 0 for i in self.stop_ids):
      raise InputError("sampler.stop_ids", f"token ids must be >= 0, got {self.stop_ids}")
    if self.stop_check_every < 1:
      raise InputError("sampler.stop_check_every", f"must be >= 1, got {self.stop_check_every}")
    if self.cache_dtype not in CACHE_DTYPES:
      raise InputError("sampler.cache_dtype",
                       f"unknown dtype {self.cache_dtype!r}; one of {sorted(CACHE_DTYPES)}")

  @property
  def cache_jnp_dtype(self):
    return CACHE_DTYPES[self.cache_dtype]
