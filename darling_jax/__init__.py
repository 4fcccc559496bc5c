"""darling_jax: DARLING (diversity-aware RL post-training of language models) in JAX / Flax NNX.

The public surface (see README.md):
  load_model(path, dtype=...) -> (model, tokenizer)   HF folder or .gguf
  sample(...), SamplerConfig                          the compiled rollout sampler
  TrainConfig, train(config)                          the DARLING / GRPO training loop
  union_find_classes, greedy_classes, diversity_scores  (darling_jax.diversity)
  pass_at_k                                           (darling_jax.evaluation)
Everything else is importable from its submodule but not advertised.
"""

__version__ = "0.1.0"

# name -> module; resolved on first access so `import darling_jax` (and the CLI) stays light.
_EXPORTS = {
    "load_model": "darling_jax.models.loading",
    "sample": "darling_jax.sampling",
    "SamplerConfig": "darling_jax.sampling",
    "TrainConfig": "darling_jax.train.config",
    "train": "darling_jax.train.loop",
    "make_update_step": "darling_jax.rl.update",
    "UpdateConfig": "darling_jax.rl.update",
    "InputError": "darling_jax.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'darling_jax' has no attribute {name!r}")
