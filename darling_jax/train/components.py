"""Builds a run's parts from its TrainConfig: policy, reference, tokenizer, data, scorers.

Everything is placed on the one mesh: the policy by DEFAULT_RULES (FSDP + tensor parallel), the
frozen reference the same way, an encoder classifier by CLASSIFIER_RULES (replicated weights), a
decoder classifier by DEFAULT_RULES over the host's devices (FSDP, not replicated).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.sharding.rules import DEFAULT_RULES
from darling_jax.tokenization.tokenizer import Tokenizer
from darling_jax.train.config import DiversitySource, TrainConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# init_preset name -> DecoderConfig (vocab from the tokenizer). Small shapes for tests and demos.
PRESETS: dict[str, Callable[[int], DecoderConfig]] = {
    "tiny": lambda vocab: DecoderConfig.tiny(vocab_size=vocab),
    "small": lambda vocab: dataclasses.replace(
        DecoderConfig.tiny(vocab_size=vocab), hidden_size=128, intermediate_size=384,
        num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32),
}


def resolve_model_path(path: str) -> pathlib.Path:
  """A checkpoint path, or a named asset: smollm2 (the packaged GGUF) or demo-policy."""
  match path:
    case "smollm2":
      from darling_jax.models.loading import packaged_smollm2_gguf

      return packaged_smollm2_gguf()
    case "demo-policy":
      from darling_jax.demo.assets import demo_policy

      return demo_policy()
  return pathlib.Path(path)


def resolve_dataset(name: str, split: str) -> str:
  """The demo's prompts are generated files; everything else is a registry name or a path."""
  if name == "demo":
    from darling_jax.demo.assets import demo_prompts

    train, evals = demo_prompts()
    return str(evals if split == "eval" else train)
  return name


def resolve_classifier(path: str) -> pathlib.Path:
  if path == "default":
    from darling_jax.demo.assets import default_classifier

    return default_classifier()
  return pathlib.Path(path)


def load_tokenizer(source: str) -> Tokenizer:
  path = resolve_model_path(source)
  if path.suffix == ".gguf":
    from darling_jax.models.gguf_decoder import _open, gguf_tokenizer

    return gguf_tokenizer(_open(path), path)
  from darling_jax.tokenization.tokenizer import load_hf_tokenizer

  return load_hf_tokenizer(path)


def build_policy(config: TrainConfig, mesh: Mesh) -> tuple[Decoder, Tokenizer]:
  pc = config.policy
  pdt, dt = _DTYPES[pc.param_dtype], _DTYPES[pc.dtype]
  if pc.path:
    from darling_jax.models.loading import load_model

    model, tok = load_model(resolve_model_path(pc.path), dt, param_dtype=pdt, mesh=mesh,
                            rules=DEFAULT_RULES)
  else:
    if pc.init_preset not in PRESETS:
      raise InputError("policy.init_preset", f"unknown preset {pc.init_preset!r}; choose from "
                       f"{sorted(PRESETS)}")
    tok = load_tokenizer(pc.tokenizer)
    from darling_jax.models.decoder_init import init_decoder

    cfg = dataclasses.replace(PRESETS[pc.init_preset](tok.vocab_size),
                              eos_token_ids=tok.eos_token_ids)
    model = init_decoder(cfg, config.seed, param_dtype=pdt, dtype=dt, mesh=mesh)
  if pc.remat:
    model.remat = True
  model.attention, model.attention_mesh = pc.attention, mesh  # splash runs per shard of `mesh`
  return model, tok


def build_data(config: TrainConfig, tokenizer: Tokenizer, split: str, *, shuffle: bool = True,
               num_epochs: int | None = None, batch_size: int | None = None,
               dataset: str | None = None):
  """The prompt iterator of `split` of `dataset` (this host's shard) and the dataset spec.

  A .jsonl dataset is one file: its rows are the split named `split`.
  """
  from darling_jax.data.builders import load_split
  from darling_jax.data.pipeline import PipelineConfig, prompt_iterator
  from darling_jax.data.registry import get_dataset

  dc = config.data
  dataset = resolve_dataset(dataset or dc.dataset, split)
  if dataset.endswith(".jsonl"):
    from darling_jax.data.registry import custom_dataset
    from darling_jax.data.rows import FieldMapping

    spec = custom_dataset(dataset, FieldMapping(prompt=dc.prompt_field,
                                                answer=dc.answer_field or None), split=split)
  else:
    spec = get_dataset(dataset)
  if dc.prompt_template:
    from darling_jax.data.registry import MATH_TEMPLATE, PLAIN_TEMPLATE

    spec = dataclasses.replace(spec, template={"plain": PLAIN_TEMPLATE,
                                               "math": MATH_TEMPLATE}[dc.prompt_template])
  source = load_split(spec, split, data_dir=dc.data_dir or None)
  hosts = jax.process_count()
  global_b = batch_size or dc.batch_size
  if global_b % hosts:
    raise InputError("data.batch_size", f"{global_b} prompts do not split over {hosts} hosts")
  if global_b > len(source):
    # The pipeline would otherwise repeat the split to fill one batch, tokenising for hours.
    field = "data.batch_size" if batch_size is None else "eval.num_prompts"
    raise InputError(field, f"{global_b} exceeds the {len(source)} prompts of {dataset!r} "
                     f"split {split!r}")
  # Every host walks the same global stream and scores its own slice of each batch
  # (rollout_stage), so the prompts of step t do not depend on how many hosts there are.
  pipe = PipelineConfig(batch_size=global_b, max_prompt_tokens=dc.max_prompt_tokens,
                        seed=config.seed, shuffle=shuffle, num_epochs=num_epochs,
                        shard_index=0, shard_count=1)
  return prompt_iterator(source, tokenizer, pipe, template=spec.template), spec


def _import_quality(path: str):
  """A user QualityFn named by its import path ("package.module.function"); configs are trusted."""
  import importlib

  module_name, _, attr = path.rpartition(".")
  try:
    fn = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise InputError("quality.functions", f"cannot import {path!r} ({e})") from None
  if not callable(fn):
    raise InputError("quality.functions", f"{path!r} is not callable")
  return fn


def build_quality(config: TrainConfig):
  """One QualityFn: builtins by name (darling_jax.rewards.BUILTINS) and user functions by import
  path, summed with their weights."""
  from darling_jax.rewards import BUILTINS, WeightedSum, builtin
  from darling_jax.rewards.combine import VERIFIERS

  fns = []
  for name, w in config.quality.functions:
    if name == "reward_model":
      if not config.quality.reward_model:
        raise InputError("quality.reward_model", "the reward_model quality needs its folder")
      fns.append((builtin(name, path=config.quality.reward_model), float(w)))
    elif name in VERIFIERS:
      fns.append((builtin(name, timeout_s=config.quality.timeout_s,
                          batch_timeout_s=config.quality.step_timeout_s), float(w)))
    elif name in BUILTINS:
      fns.append((builtin(name), float(w)))
    elif "." in name:
      fns.append((_import_quality(name), float(w)))
    else:
      raise InputError("quality.functions", f"unknown quality function {name!r}; builtins: "
                       f"{sorted(BUILTINS)}, or an import path (package.module.function)")
  if len(fns) == 1 and fns[0][1] == 1.0:
    return fns[0][0]
  return WeightedSum(fns)


@dataclasses.dataclass
class DiversityScorer:
  """Host entry point of the diversity stage: texts [B][G] -> equivalence probs or diversity."""

  source: DiversitySource
  pair_scorer: Any = None  # PairScorer for CLASSIFIER
  threshold: float = 0.5  # the classifier's calibrated tau
  ngram: int = 4

  def equivalence(self, groups: list[list[str]]) -> np.ndarray:
    return np.asarray(self.pair_scorer(groups), np.float32)

  def lexical(self, groups: list[list[str]]) -> np.ndarray:
    from darling_jax.diversity.ngram import ngram_diversity

    return ngram_diversity(groups, n=self.ngram)


def build_diversity(config: TrainConfig) -> DiversityScorer | None:
  dc = config.diversity
  from darling_jax.rl.fusion import Fusion

  uses = config.update.reward.fusion.mode is not Fusion.QUALITY_ONLY
  if dc.source is DiversitySource.NONE:
    return None
  if dc.source is DiversitySource.NGRAM:
    return DiversityScorer(DiversitySource.NGRAM, ngram=dc.ngram)
  if not uses and not dc.measure_when_unused:
    return None
  from darling_jax.diversity.pair_scoring import load_scorer

  # Each host scores its own groups on its local devices: an encoder's rows split over them
  # (weights replicated); a decoder classifier's weights FSDP-sharded over them, like the policy.
  # An answer length the classifier cannot hold fails here, naming the diversity.* field.
  scorer = load_scorer(resolve_classifier(dc.classifier), symmetric=dc.symmetric,
                       answer_max_words=dc.answer_max_words,
                       answer_max_tokens=dc.answer_max_tokens, length_source="diversity")
  return DiversityScorer(DiversitySource.CLASSIFIER, scorer, threshold=scorer.threshold)


def trainable_and_frozen(config: TrainConfig, model: Decoder) -> tuple[Any, Any, Any]:
  """(graphdef, trainable params, frozen base params or None)."""
  graphdef, params = nnx.split(model)
  lora = config.update.lora
  if lora.enabled:
    from darling_jax.rl.lora import init_lora

    adapters = jax.jit(lambda p, k: init_lora(p, lora, k))(params, jax.random.key(config.seed + 1))
    return graphdef, adapters, params
  return graphdef, params, None
