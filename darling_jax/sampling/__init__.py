"""Rollout sampling: the compiled prefill + shared-prefix decode loop, filters, text helpers."""

from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.filters import MinP, Temperature, TopK, TopP, choose_tokens, filters_for
from darling_jax.sampling.memory import MemoryEstimate, check_fits, estimate_bytes
from darling_jax.sampling.sampler import Rollouts, sample, sample_model, shared_prefix_attend
from darling_jax.sampling.text import bucket_length, generate_texts, left_pad

__all__ = [
    "SamplerConfig",
    "Temperature",
    "TopK",
    "TopP",
    "MinP",
    "choose_tokens",
    "filters_for",
    "MemoryEstimate",
    "estimate_bytes",
    "check_fits",
    "Rollouts",
    "sample",
    "sample_model",
    "shared_prefix_attend",
    "bucket_length",
    "left_pad",
    "generate_texts",
]
