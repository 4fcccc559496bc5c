"""Abstract (shape-only) models of a run's parts, for compiling without weights.

The policy comes from `policy.architecture` (a DecoderConfig preset). The classifier and the reward
model come from their folders when present (config files only: no tensor is read), else from the
named presets below; a part that is neither is reported as not shaped, with the reason.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.train.config import DiversitySource, TrainConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Shaped:
  """A module split into (graphdef, abstract state), or why it could not be shaped."""

  graphdef: Any = None
  state: Any = None
  config: Any = None  # the part's own config (ClassifierConfig, RewardModelConfig)
  reason: str = ""  # set when not shaped


def policy_config(config: TrainConfig) -> DecoderConfig:
  """The policy's DecoderConfig from policy.architecture (required: no weights are read)."""
  name = config.policy.architecture
  if not name:
    raise InputError("policy.architecture", "compiling without weights needs the policy's shapes: "
                     "set policy.architecture to a DecoderConfig preset (e.g. qwen3_4b_base, "
                     "llama3p1_8b_instruct, demo_policy)")
  preset = getattr(DecoderConfig, name, None)
  if preset is None or not callable(preset) or name.startswith("_") or name in (
      "from_hf", "to_hf", "num_params"):
    raise InputError("policy.architecture", f"unknown DecoderConfig preset {name!r}")
  return preset()


def abstract_policy(config: TrainConfig, model_cfg: DecoderConfig,
                    mesh: Any = None) -> tuple[Any, Any]:
  """(graphdef, abstract params) of the Decoder `build_policy` would return (remat and the
  attention backend on `mesh` included: `auto` on a TPU topology's mesh is splash)."""
  from darling_jax.models.decoder import Decoder

  pc = config.policy

  def build():
    model = Decoder(model_cfg, rngs=nnx.Rngs(0), param_dtype=_DTYPES[pc.param_dtype],
                    dtype=_DTYPES[pc.dtype])
    if pc.remat:
      model.remat = True
    model.attention, model.attention_mesh = pc.attention, mesh
    return model

  return nnx.split(nnx.eval_shape(build))


# ---- the classifier ------------------------------------------------------------------------------

def _minilm():
  from darling_jax.models.encoders import bert

  return bert.Config(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                     intermediate_size=1536)


def _modernbert_base():
  from darling_jax.models.encoders import modernbert

  return modernbert.Config()  # its defaults are answerdotai/ModernBERT-base


def _qwen3_embedding_4b():
  from darling_jax.models.decoder_config import DecoderConfig
  from darling_jax.models.encoders import decoder_classifier

  # Qwen/Qwen3-Embedding-4B's config.json: the Qwen3-4B body with a 151,665-row vocabulary and
  # <|endoftext|> (151643) as its pad token; the paper's math classifier adds a 2-way head.
  body = dataclasses.replace(DecoderConfig.qwen3_4b_base(), vocab_size=151_665,
                             max_position_embeddings=40_960)
  return decoder_classifier.Config(body, num_labels=2, pad_token_id=151_643)


# name -> (HF model_type, encoder Config factory, classifier recipe it is trained with)
CLASSIFIER_PRESETS: dict[str, tuple[str, Callable[[], Any], str]] = {
    "minilm": ("bert", _minilm, "default"),
    "default": ("bert", _minilm, "default"),  # the demo's classifier: MiniLM, default recipe
    "modernbert-base": ("modernbert", _modernbert_base, "full"),  # the chat recipe's
    "qwen3-embedding-4b": ("qwen3", _qwen3_embedding_4b, "full"),  # the math recipe's
}


def _classifier_from_recipe(model_type: str, recipe_name: str, threshold: float):
  from darling_jax.diversity.classifier import ClassifierConfig
  from darling_jax.diversity.classifier_recipes import get_recipe

  r = get_recipe(recipe_name)
  return ClassifierConfig(mode=r.mode, model_type=model_type, max_tokens=r.max_tokens,
                          windows=r.windows, bag_tokens=r.bag_tokens, threshold=threshold,
                          head_hidden=r.head_hidden)


def abstract_classifier(config: TrainConfig) -> Shaped | None:
  """The PairClassifier `build_diversity` would load (None: the run uses no classifier)."""
  from darling_jax.rl.fusion import Fusion

  dc = config.diversity
  uses = config.update.reward.fusion.mode is not Fusion.QUALITY_ONLY
  if dc.source is not DiversitySource.CLASSIFIER or not (uses or dc.measure_when_unused):
    return None
  from darling_jax.diversity.classifier import ClassifierConfig, PairClassifier, PairMode
  from darling_jax.models import encoders

  folder = pathlib.Path(dc.classifier)
  name = dc.classifier.lower()
  if (folder / "classifier.json").exists():
    from darling_jax.diversity.classifier_io import read_meta

    clf_cfg = ClassifierConfig.from_json(read_meta(folder)["classifier"])
    fam = encoders.family(clf_cfg.model_type)
    enc_cfg = fam.Config.from_hf(encoders.read_hf_config(folder / "hf"))
  elif name in CLASSIFIER_PRESETS:
    model_type, make, recipe = CLASSIFIER_PRESETS[name]
    tau = config.update.reward.threshold
    clf_cfg = _classifier_from_recipe(model_type, recipe, 0.5 if tau is None else tau)
    fam = encoders.family(model_type)
    enc_cfg = make()
    if clf_cfg.mode == PairMode.CROSS:
      enc_cfg = dataclasses.replace(enc_cfg, num_labels=2)
  else:
    return Shaped(reason=f"{dc.classifier!r} is neither a classifier folder here nor a preset "
                  f"({sorted(CLASSIFIER_PRESETS)})")

  def build():
    return PairClassifier(fam.Model(enc_cfg, rngs=nnx.Rngs(0)), clf_cfg, rngs=nnx.Rngs(0))

  graphdef, state = nnx.split(nnx.eval_shape(build))
  return Shaped(graphdef, state, clf_cfg)


# ---- the reward model ----------------------------------------------------------------------------

def _athene_rm_8b():
  from darling_jax.models.reward_model import HeadLayout, RewardModelConfig

  # Nexusflow/Athene-RM-8B: a Llama-3.1-8B body, v_head read at CLS id 128003.
  return RewardModelConfig(decoder=DecoderConfig.llama3p1_8b_instruct(), head=HeadLayout.V_HEAD,
                           cls_token_id=128003)


REWARD_MODEL_PRESETS: dict[str, Callable[[], Any]] = {"athene-rm-8b": _athene_rm_8b}


def _reward_config_from_folder(folder: pathlib.Path):
  from darling_jax.models.hf_folder import read_config_json
  from darling_jax.models.reward_model import HeadLayout, Pooling, RewardModelConfig
  from darling_jax.models.safetensors_io import SafetensorsFolder

  st = SafetensorsFolder(folder)  # headers only
  heads = [h for h in HeadLayout if h.tensor in st] or [HeadLayout.SCORE]
  cls_id = 0 if heads[0].pooling is Pooling.LAST_CLS else None  # its value does not change shapes
  return RewardModelConfig.from_hf(read_config_json(folder), head=heads[0], cls_token_id=cls_id)


def abstract_reward_model(config: TrainConfig, dtype: str = "bfloat16") -> Shaped | None:
  """The RewardModel the `reward_model` quality loads (bfloat16, its default), or None."""
  if not any(name == "reward_model" for name, _ in config.quality.functions):
    return None
  from darling_jax.models.reward_model import RewardModel

  path = config.quality.reward_model
  folder = pathlib.Path(path)
  key = folder.name.lower()
  if (folder / "config.json").exists():
    rm_cfg = _reward_config_from_folder(folder)
  elif key in REWARD_MODEL_PRESETS:
    rm_cfg = REWARD_MODEL_PRESETS[key]()
  else:
    return Shaped(reason=f"{path!r} is neither a reward-model folder here nor a preset "
                  f"({sorted(REWARD_MODEL_PRESETS)})")
  dt = _DTYPES[dtype]
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: RewardModel(rm_cfg, rngs=nnx.Rngs(0), param_dtype=dt, dtype=dt)))
  return Shaped(graphdef, state, rm_cfg)
