"""Reward models: a decoder body plus a linear scalar head read at one token of each sequence.

Axis letters: B batch, T length, D model width, C head outputs (num_labels).

Two checkpoint layouts are read (and written back):
  * HF `LlamaForSequenceClassification` / `Qwen2ForSequenceClassification` /
    `Qwen3ForSequenceClassification`: `model.*` + `score.weight` [C, D] (no bias). The score of a
    sequence is the head at its rightmost token that is not `pad_token_id` (transformers'
    `GenericForSequenceClassification`: `argmax(arange(T) * (ids != pad))`, so it handles left and
    right padding, and a sequence whose real tokens end in the pad id is read before them). Without
    a pad id transformers reads position T-1 (batch 1 only); we read the last attended position,
    which is the same for an unpadded row.
  * Athene-RM (Nexusflow/Athene-RM-8B, the paper's chat quality model; custom code on the Hub):
    `model.*` + `v_head.weight` [1, D], read at the LAST occurrence of a CLS token (id 128003,
    `<|reserved_special_token_1|>`, which its pipeline appends after the chat template). A row
    without the CLS token (Athene's own code crashes there) is read at its last attended position.

The score r = W_score h_t (no bias, no activation) is unbounded; it is computed in float32.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.hf_folder import read_config_json, write_hf_folder
from darling_jax.models.hf_decoder import decoder_sources, decoder_to_hf_tensors, place_module
from darling_jax.models.safetensors_io import SafetensorsFolder
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules


class Pooling(enum.Enum):
  """Which token's hidden state the head reads."""

  LAST_NON_PAD = "last_non_pad"  # HF *ForSequenceClassification
  LAST_CLS = "last_cls"  # Athene-RM: last occurrence of cls_token_id


class HeadLayout(enum.Enum):
  """The checkpoint tensor holding the head, and the matching pooling rule."""

  SCORE = "score"  # HF *ForSequenceClassification: score.weight
  V_HEAD = "v_head"  # Athene-RM: v_head.weight

  @property
  def tensor(self) -> str:
    return f"{self.value}.weight"

  @property
  def pooling(self) -> Pooling:
    return Pooling.LAST_NON_PAD if self is HeadLayout.SCORE else Pooling.LAST_CLS


_SEQ_CLS_ARCH = {Family.LLAMA: "LlamaForSequenceClassification",
                 Family.QWEN2: "Qwen2ForSequenceClassification",
                 Family.QWEN3: "Qwen3ForSequenceClassification"}
_ATHENE_ARCH = "AtheneForSequenceClassification"


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  """A decoder body (its own HF config, tie flag included) plus the head and pooling rule."""

  decoder: DecoderConfig
  labels: tuple[str, ...] = ("LABEL_0",)  # id2label order; C = len(labels)
  pad_token_id: int | None = None
  head: HeadLayout = HeadLayout.SCORE
  cls_token_id: int | None = None  # Pooling.LAST_CLS only

  def __post_init__(self):
    if not self.labels:
      raise InputError("config.id2label", "a reward model needs at least one label")
    if self.head.pooling is Pooling.LAST_CLS and self.cls_token_id is None:
      raise InputError("cls_token_id",
                       f"head {self.head.value!r} pools at a CLS token; give its id")
    for name in ("pad_token_id", "cls_token_id"):
      tid = getattr(self, name)
      if tid is not None and not 0 <= tid < self.decoder.vocab_size:
        raise InputError(name, f"{tid} is outside the vocabulary [0, {self.decoder.vocab_size})")

  @property
  def num_labels(self) -> int:
    return len(self.labels)

  @property
  def pooling(self) -> Pooling:
    return self.head.pooling

  @classmethod
  def from_hf(cls, raw: Mapping[str, Any], head: HeadLayout = HeadLayout.SCORE,
              cls_token_id: int | None = None, source: str = "config.json") -> "RewardModelConfig":
    """Reads config.json; labels follow transformers (id2label, else num_labels, else 2)."""
    decoder = DecoderConfig.from_hf(raw, source)
    id2label = raw.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
      try:
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
      except (TypeError, ValueError):
        raise InputError(source, f"id2label keys must be integers, got {list(id2label)}") from None
      if [k for k, _ in ordered] != list(range(len(ordered))):
        raise InputError(source, f"id2label keys must be 0..C-1, got {[k for k, _ in ordered]}")
      labels = tuple(v for _, v in ordered)
    else:
      n = raw.get("num_labels", 2)  # transformers' default when a config names no labels
      if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(source, f"num_labels must be a positive integer, got {n!r}")
      labels = tuple(f"LABEL_{i}" for i in range(n))
    pad = raw.get("pad_token_id")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
      raise InputError(source, f"pad_token_id must be an integer or null, got {pad!r}")
    return cls(decoder=decoder, labels=labels, pad_token_id=pad, head=head,
               cls_token_id=cls_token_id)

  def to_hf(self) -> dict[str, Any]:
    out = self.decoder.to_hf()
    out["architectures"] = [_SEQ_CLS_ARCH[self.decoder.family] if self.head is HeadLayout.SCORE
                            else _ATHENE_ARCH]
    out["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
    out["label2id"] = {name: i for i, name in enumerate(self.labels)}
    out["pad_token_id"] = self.pad_token_id
    return out


def pool_index(
    ids_BxT: Int[Array, "B T"],
    mask_BxT: Int[Array, "B T"],
    pooling: Pooling,
    token_id: int | None,
) -> Int[Array, "B"]:
  """Index of the token whose hidden state is scored, per row (see the module docstring)."""
  T = ids_BxT.shape[1]
  t_1xT = jnp.arange(T, dtype=jnp.int32)[None, :]
  last_attended_B = jnp.max(jnp.where(mask_BxT.astype(bool), t_1xT, 0), axis=1)
  if token_id is None:  # LAST_NON_PAD without a pad id
    return last_attended_B
  match pooling:
    case Pooling.LAST_NON_PAD:
      # transformers' exact rule (all-pad row -> 0), independent of the attention mask.
      return jnp.argmax(t_1xT * (ids_BxT != token_id).astype(jnp.int32), axis=1).astype(jnp.int32)
    case Pooling.LAST_CLS:
      hit_BxT = ids_BxT == token_id
      last_hit_B = jnp.max(jnp.where(hit_BxT, t_1xT, 0), axis=1)
      return jnp.where(jnp.any(hit_BxT, axis=1), last_hit_B, last_attended_B)
    case _:
      raise ValueError(pooling)


class RewardModel(nnx.Module):
  """`Decoder` body + linear head [D, C]; `model(ids, attention_mask) -> scores [B, C]` float32."""

  def __init__(self, config: RewardModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
               dtype=jnp.float32):
    self.config = config
    # The body never produces LM logits: building it "tied" allocates no [D, V] lm_head. The
    # checkpoint's own tie flag stays in `config.decoder` for export.
    body_cfg = dataclasses.replace(config.decoder, tie_word_embeddings=True)
    self.body = Decoder(body_cfg, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
    D, C = config.decoder.hidden_size, config.num_labels
    self.score = nnx.Param(
        (0.02 * jax.random.normal(rngs.params(), (D, C), jnp.float32)).astype(param_dtype),
        sharding_names=("embed", None), eager_sharding=False)

  def scores(
      self,
      input_ids: Int[Array, "B T"],
      attention_mask: Int[Array, "B T"] | None = None,
  ) -> Float[Array, "B C"]:
    """Head outputs at each row's pooled token (traceable; use `__call__` for a compiled call)."""
    cfg = self.config
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    hidden_BxTxD = self.body.hidden_states(ids, mask)
    token = cfg.pad_token_id if cfg.pooling is Pooling.LAST_NON_PAD else cfg.cls_token_id
    idx_B = pool_index(ids, mask, cfg.pooling, token)
    h_BxD = jnp.take_along_axis(hidden_BxTxD, idx_B[:, None, None], axis=1)[:, 0, :]
    return jnp.einsum("bd,dc->bc", h_BxD.astype(jnp.float32), self.score[...].astype(jnp.float32))

  def __call__(self, input_ids, attention_mask=None) -> Float[Array, "B C"]:
    """Scores [B, C] (float32) from array-likes; compiled once per input shape."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    graphdef, state = nnx.split(self)
    return _jitted_scores(graphdef, state, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_scores(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state).scores(ids, mask)


# ---- HF folders <-> RewardModel ------------------------------------------------------------------

def _cls_id_from_tokenizer(folder: pathlib.Path) -> int | None:
  """Id of tokenizer_config.json's cls_token (Athene: <|reserved_special_token_1|>), if any."""
  tcfg_path = folder / "tokenizer_config.json"
  if not tcfg_path.exists():
    return None
  try:
    cls_token = json.loads(tcfg_path.read_text()).get("cls_token")
  except json.JSONDecodeError as e:
    raise InputError(tcfg_path, f"is not valid JSON ({e})") from None
  if isinstance(cls_token, Mapping):
    cls_token = cls_token.get("content")
  if not isinstance(cls_token, str):
    return None
  from darling_jax.tokenization.tokenizer import load_hf_tokenizer

  return load_hf_tokenizer(folder).token_to_id(cls_token)


def load_reward_model(
    folder: str | os.PathLike,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
    cls_token_id: int | None = None,
) -> RewardModel:
  """Loads a HF reward-model folder (see the module docstring for the layouts) into a RewardModel.

  Every device reads only its block of each tensor (`place_sliced` via `place_module`).

  Args:
    folder: config.json + safetensors (+ tokenizer files for an Athene-style CLS head).
    param_dtype: parameter dtype; dtype: activation dtype (the head always runs in float32).
    mesh, rules: where and how to shard the parameters (default: one device).
    cls_token_id: the CLS id of a `v_head` checkpoint; default: tokenizer_config.json's cls_token.

  Raises:
    InputError: no head tensor, a head whose shape disagrees with config.json's labels, a head
      with a bias (not a *ForSequenceClassification head), or any decoder-loading problem.
      Other extra tensors (e.g. an lm_head) are ignored, as transformers ignores them.
  """
  folder = pathlib.Path(folder)
  path = folder / "config.json"
  raw = read_config_json(folder)
  st = SafetensorsFolder(folder)
  heads = [h for h in HeadLayout if h.tensor in st]
  if not heads:
    raise InputError(folder, "checkpoint has no score.weight (or v_head.weight): not a "
                     "*ForSequenceClassification reward model")
  if len(heads) > 1:
    raise InputError(folder, "checkpoint has both score.weight and v_head.weight")
  head = heads[0]
  if f"{head.value}.bias" in st:  # dropping it would shift every score; transformers has none
    raise InputError(folder, f"unexpected tensor '{head.value}.bias': a reward model's head is "
                     f"one bias-free linear layer {head.tensor}")
  if head.pooling is Pooling.LAST_CLS and cls_token_id is None:
    cls_token_id = _cls_id_from_tokenizer(folder)
    if cls_token_id is None:
      raise InputError(folder, f"{head.tensor} reads a CLS token but tokenizer_config.json has "
                       "no cls_token; pass cls_token_id (Athene-RM: 128003)")
  cfg = RewardModelConfig.from_hf(raw, head=head, cls_token_id=cls_token_id, source=str(path))
  if "model.embed_tokens.weight" not in st:
    raise InputError(folder, "checkpoint has no model.embed_tokens.weight: not a supported decoder")
  D, C = cfg.decoder.hidden_size, cfg.num_labels
  shape = st.shape_of(head.tensor)
  if shape != (C, D):
    raise InputError(folder, f"tensor {head.tensor!r} has shape {shape}, config.json implies "
                     f"({C}, {D}) for {C} label(s) {list(cfg.labels)}")
  body_cfg = dataclasses.replace(cfg.decoder, tie_word_embeddings=True)
  body_sources = decoder_sources(st, body_cfg, "model.")
  sources = {("body", *path): read for path, read in body_sources.items()}
  sources[("score",)] = lambda idx: st[head.tensor].T[idx]
  abstract = nnx.eval_shape(
      lambda: RewardModel(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype))
  return place_module(abstract, sources, mesh=mesh, rules=rules)


def _host(x: jax.Array) -> np.ndarray:
  if not x.is_fully_addressable:  # multi-host: every process gathers, process 0 writes
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def reward_model_to_hf_tensors(model: RewardModel) -> dict[str, np.ndarray]:
  out = decoder_to_hf_tensors(model.body)  # the body is built tied: model.* only
  out[model.config.head.tensor] = np.ascontiguousarray(_host(model.score[...]).T)
  return out


def export_reward_model(model: RewardModel, folder: str | os.PathLike,
                        tokenizer: Any = None) -> None:
  """Writes a HF folder that transformers (or Athene's code) loads back as the same reward model."""
  write_hf_folder(folder, model.config.to_hf(), reward_model_to_hf_tensors(model), tokenizer)
