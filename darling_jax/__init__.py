"""darling_jax: DARLING (diversity-aware RL post-training of language models) in JAX / Flax NNX."""

__version__ = "0.1.0"
