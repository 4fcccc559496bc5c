"""Decoder pair classifiers: Qwen3 / Qwen2 / Llama `*ForSequenceClassification` folders as an
encoder family (the encoder contract of encoders/__init__.py), for the cross-encoder classifier.

The math classifier of DARLING is Qwen3-Embedding-4B with a 2-way head. Here any decoder body
(darling_jax.models.decoder.Decoder) plus a bias-free head `score` [D, C] read at the last
token that is not the pad id (transformers' GenericForSequenceClassification rule, shared with
the reward models: reward_model.pool_index) is one. The pair row is

    y_i [SEP] y_j [EOS]     (no BOS; segment ids unused),

SEP = tokenizer_config.json's sep_token if it names one, else the EOS token; EOS =
tokenizer_config.json's eos_token, else config.json's eos_token_id. darling.md does not give the
reference's decoder layout, so this is the tokenizer's own separator convention; the classifier
folder records nothing else, and training and scoring build the same rows. Every row ends in EOS so
the head reads a fixed "end of pair" token, as an embedding model's last-token pooling does. When
the pad id equals EOS (common in Qwen checkpoints), transformers' rule reads the token before the
trailing EOS instead; we follow transformers, so a transformers-trained head scores the same.

Weights shard like the policy (`SHARDED_WEIGHTS`: DEFAULT_RULES, FSDP over `embed`), so a 4B
classifier is not replicated on every device.

Axis letters: B rows, T length, D width, C labels.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.models.hf_decoder import decoder_sources, decoder_to_hf_tensors, place_module
from darling_jax.models.hf_folder import read_config_json, write_hf_folder
from darling_jax.models.reward_model import Pooling, RewardModelConfig, pool_index
from darling_jax.models.safetensors_io import SafetensorsFolder
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules

MODEL_TYPES = ("llama", "qwen2", "qwen3")
DEFAULT_LOAD_RULES = DEFAULT_RULES  # load_encoder's default: shard like the policy
PAIR_OVERHEAD = 2  # [SEP] and [EOS]


@dataclasses.dataclass(frozen=True)
class Config:
  """A decoder body plus an optional C-way head (None: a bare body, e.g. Qwen3-Embedding)."""

  decoder: DecoderConfig
  num_labels: int | None = 2
  pad_token_id: int = 0

  def __post_init__(self):
    if self.num_labels is not None and self.num_labels < 1:
      raise InputError("num_labels", f"must be >= 1 or None (no head), got {self.num_labels}")
    if not 0 <= self.pad_token_id < self.decoder.vocab_size:
      raise InputError("pad_token_id", f"{self.pad_token_id} is outside the vocabulary")

  @property
  def vocab_size(self) -> int:
    return self.decoder.vocab_size

  @property
  def hidden_size(self) -> int:
    return self.decoder.hidden_size

  @property
  def max_position_embeddings(self) -> int:
    return self.decoder.max_position_embeddings

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> "Config":
    archs = [str(a) for a in hf.get("architectures") or []]
    headed = any(a.endswith("ForSequenceClassification") for a in archs)
    num_labels = RewardModelConfig.from_hf(hf, source=source).num_labels if headed else None
    pad = hf.get("pad_token_id")
    if isinstance(pad, bool) or not isinstance(pad, int):
      raise InputError(source, "a decoder classifier needs config.json pad_token_id (an integer):"
                       " rows are padded with it and read at the last non-pad token, got "
                       f"{pad!r}")
    return cls(DecoderConfig.from_hf(hf, source), num_labels, pad)

  def to_hf(self) -> dict[str, Any]:
    if self.num_labels is None:
      out = self.decoder.to_hf()
      out["architectures"] = [out["architectures"][0].replace("ForCausalLM", "Model")]
      out["pad_token_id"] = self.pad_token_id
      return out
    labels = tuple(f"LABEL_{i}" for i in range(self.num_labels))
    return RewardModelConfig(self.decoder, labels, self.pad_token_id).to_hf()

  @classmethod
  def tiny(cls, num_labels: int | None = 2) -> "Config":
    dec = dataclasses.replace(DecoderConfig.tiny(vocab_size=99), max_position_embeddings=256)
    return cls(dec, num_labels, 0)


class Model(nnx.Module):
  """Decoder body + bias-free head [D, C] at the last non-pad token (see module docstring)."""

  SHARDED_WEIGHTS = True  # PairScorer: place by DEFAULT_RULES on a policy-style mesh

  def __init__(self, config: Config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.config = config
    # Built "tied" so no [D, V] lm_head is allocated: a classifier never produces LM logits.
    body_cfg = dataclasses.replace(config.decoder, tie_word_embeddings=True)
    self.body = Decoder(body_cfg, rngs=rngs, param_dtype=dtype, dtype=dtype)
    if config.num_labels:
      D, C = config.hidden_size, config.num_labels
      self.score = nnx.Param(
          (0.02 * jax.random.normal(rngs.params(), (D, C), jnp.float32)).astype(dtype),
          sharding_names=("embed", None), eager_sharding=False)

  def __call__(self, input_ids: Int[Array, "B T"], attention_mask: Int[Array, "B T"],
               token_type_ids: Int[Array, "B T"] | None = None
               ) -> tuple[Float[Array, "B C"] | None, dict[str, Array]]:
    del token_type_ids  # decoders have no segment embedding
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.asarray(attention_mask, jnp.int32)
    hidden_BxTxD = self.body.hidden_states(ids, mask)
    idx_B = pool_index(ids, mask, Pooling.LAST_NON_PAD, self.config.pad_token_id)
    pooled_BxD = jnp.take_along_axis(hidden_BxTxD, idx_B[:, None, None], axis=1)[:, 0, :]
    w = mask.astype(jnp.float32)[..., None]
    mean_BxD = (hidden_BxTxD.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    out = {"hidden": hidden_BxTxD, "pooled": pooled_BxD, "mean": mean_BxD,
           "pre_logits": pooled_BxD}
    if not self.config.num_labels:
      return None, out
    logits = jnp.einsum("bd,dc->bc", pooled_BxD.astype(jnp.float32),
                        self.score[...].astype(jnp.float32))
    return logits, out


def load(path: str | os.PathLike, dtype=jnp.float32, mesh: Mesh | None = None,
         rules: LogicalRules = DEFAULT_RULES) -> Model:
  """A Qwen3/Qwen2/Llama *ForSequenceClassification (or bare *Model / *ForCausalLM) folder.

  Every device reads only its block of each tensor (reward_model's placement).

  Raises:
    InputError: no pad_token_id, a head whose shape disagrees with config.json, a head with a
      bias, or any decoder-loading problem, each naming the folder or tensor.
  """
  folder = pathlib.Path(path)
  cfg = Config.from_hf(read_config_json(folder), str(folder / "config.json"))
  st = SafetensorsFolder(folder)
  if "model.embed_tokens.weight" in st:
    prefix = "model."
  elif "embed_tokens.weight" in st:
    prefix = ""  # a bare Qwen3Model / LlamaModel (e.g. an embedding model)
  else:
    raise InputError(folder, "checkpoint has no (model.)embed_tokens.weight: not a supported "
                     "decoder")
  if "score.bias" in st:
    raise InputError(folder, "unexpected tensor 'score.bias': a *ForSequenceClassification head "
                     "is one bias-free linear layer")
  if "score.weight" in st:
    C, D = st.shape_of("score.weight")
    if D != cfg.hidden_size or (cfg.num_labels and cfg.num_labels != C):
      raise InputError(folder, f"tensor 'score.weight' has shape {(C, D)}, config.json implies "
                       f"({cfg.num_labels}, {cfg.hidden_size})")
    cfg = dataclasses.replace(cfg, num_labels=C)
  elif cfg.num_labels:
    raise InputError(folder, "config.json names a *ForSequenceClassification but the checkpoint "
                     "has no score.weight")
  body_cfg = dataclasses.replace(cfg.decoder, tie_word_embeddings=True)
  sources = {("body", *p): read for p, read in decoder_sources(st, body_cfg, prefix).items()}
  if cfg.num_labels:
    sources[("score",)] = lambda idx: st["score.weight"].T[idx]
  abstract = nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0), dtype=dtype))
  return place_module(abstract, sources, mesh=mesh, rules=rules)


def export(model: Model, folder: str | os.PathLike) -> None:
  """A HF folder transformers reloads (AutoModelForSequenceClassification) to the same numbers."""
  tensors = decoder_to_hf_tensors(model.body)
  if model.config.num_labels:
    score = model.score[...]
    if not score.is_fully_addressable:
      from jax.experimental import multihost_utils

      score = multihost_utils.process_allgather(score, tiled=True)
    tensors["score.weight"] = np.ascontiguousarray(np.asarray(jax.device_get(score)).T)
  else:
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
  write_hf_folder(folder, model.config.to_hf(), tensors)


# ---- tokenizer ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecoderPairTokenizer:
  """EncoderTokenizer's interface for decoder rows: `a [SEP] b [EOS]`, no segment ids."""

  tokenizer: Any  # tokenizers.Tokenizer with truncation/padding disabled
  sep_id: int
  eos_id: int
  pad_id: int
  uses_token_type_ids: bool = False

  @property
  def cls_id(self) -> int:
    return self.eos_id  # only bi mode reads cls_id (idf of special tokens); decoders are cross

  @property
  def pair_overhead(self) -> int:
    return PAIR_OVERHEAD

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, model_type: str = "") -> "DecoderPairTokenizer":
    from darling_jax.tokenization.tokenizer import read_fast_tokenizer

    del model_type
    folder = pathlib.Path(folder)
    tok = read_fast_tokenizer(folder, "a decoder classifier folder")
    from darling_jax.tokenization.tokenizer import read_json_object

    tcfg_path = folder / "tokenizer_config.json"
    tcfg: dict[str, Any] = read_json_object(tcfg_path) if tcfg_path.exists() else {}
    hf = read_config_json(folder)

    def token(role: str) -> int | None:
      t = tcfg.get(f"{role}_token")
      if isinstance(t, Mapping):
        t = t.get("content")
      return tok.token_to_id(t) if isinstance(t, str) else None

    eos = token("eos")
    if eos is None:
      ids = hf.get("eos_token_id")
      eos = ids[0] if isinstance(ids, list) and ids else ids
    if isinstance(eos, bool) or not isinstance(eos, int):
      raise InputError(folder, "a decoder classifier needs an EOS token to end each pair row "
                       "(tokenizer_config.json eos_token or config.json eos_token_id)")
    sep = token("sep")
    pad = hf.get("pad_token_id")
    if isinstance(pad, bool) or not isinstance(pad, int):
      raise InputError(folder, "a decoder classifier needs config.json pad_token_id")
    return cls(tok, eos if sep is None else sep, eos, pad)

  def encode(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, without special tokens, truncated to its first `max_tokens`."""
    from darling_jax.tokenization.tokenizer import encode_texts

    return encode_texts(self.tokenizer, texts, max_tokens)

  def single(self, ids: Sequence[int]) -> list[int]:
    """`a [EOS]` (bi mode is not offered for decoders; kept for the interface)."""
    return [*ids, self.eos_id]

  def pair(self, a: Sequence[int], b: Sequence[int]) -> tuple[list[int], list[int]]:
    """(`a [SEP] b [EOS]`, all-zero segment ids)."""
    ids = [*a, self.sep_id, *b, self.eos_id]
    return ids, [0] * len(ids)
