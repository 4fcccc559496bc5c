"""The learned equivalence classifier: P(similar | y_i, y_j) from a text encoder, in two modes.

Cross-encoder (the paper's): the encoder reads `[CLS] y_i [SEP] y_j [SEP]` (a decoder classifier:
`y_i [SEP] y_j [EOS]`, read at its last token) and its own 2-way sequence-classification head gives
logits z; p = softmax(z)[similar_label] (label 1 unless configured). G(G-1)/2 encoder passes per
group (twice that with symmetric scoring); every pair attends across both answers. How much of
each answer the row holds is answer_length.py's.

Bi-encoder: each answer is encoded once, as `windows` consecutive windows of `max_tokens` tokens
(`[CLS] w [SEP]` each). From those, per answer:

    m_i = normalise(sum_w e_iw),  f_i = e_i1  (e_iw = unit masked-mean embedding of window w),
    s_i = {distinct token ids of y_i's first bag_tokens tokens}  (a binary bag over the vocabulary;
          host tokenisation is cheap, so it reads further than the encoder windows),

and for a pair the head reads K = 4 similarity features, each symmetric in (i, j):

    phi_ij = [cos(m_i, m_j), cos(f_i, f_j),
              sum_{t in s_i & s_j} idf_t^2 / sqrt(sum_{t in s_i} idf_t^2 sum_{t in s_j} idf_t^2),
              |s_i & s_j| / |s_i | s_j|],
    z_ij = W2 gelu(W1 phi_ij + b1) + b2   (or W phi_ij + b with head_hidden = 0),

so p_ij = p_ji exactly and a group costs G encoder passes instead of G(G-1)/2. idf_t =
log((1 + n) / (1 + df_t)) over the n training answers (0 for special tokens), stored with the head.
The lexical terms are there because, on the human-labelled NoveltyBench pairs, token overlap is as
predictive as a frozen MiniLM's embedding cosine, and the two together beat either (see the
classifier section of the benchmark notes); a high-dimensional head on [e_i * e_j, |e_i - e_j|]
overfits 800 pairs.

The prompt is never part of the input (as in DARLING and NoveltyBench).

Axis letters: B groups, G answers per group, P rows, L length, D encoder width, V vocab,
K similarity features, E head hidden width, C = 2 classes.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from darling_jax.errors import InputError

FEATURES = ("cos_mean", "cos_first", "lex_idf_cos", "lex_jaccard")


class PairMode(enum.Enum):
  CROSS = "cross"  # one encoder pass per ordered pair; the paper's classifier
  BI = "bi"  # one encoder pass per answer window; a symmetric head on similarity features


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """How a trained classifier is applied (saved beside its weights as classifier.json)."""

  mode: PairMode = PairMode.BI
  model_type: str = "bert"  # the encoder family (HF config.json model_type)
  max_tokens: int = 128  # bi mode: tokens per answer window (cross mode: see answer_max_*)
  windows: int = 1  # bi mode: encode up to this many consecutive max_tokens windows per answer
  bag_tokens: int = 512  # bi mode: the lexical bag of words reads this many tokens per answer
  threshold: float = 0.5  # pair is equivalent iff p > threshold (the paper's tau)
  # Cross mode: score (i, j) once for i < j, as the reference does; True: the mean of both orders.
  symmetric: bool = False
  # Per-answer input length (answer_length.py): the pair row's max length (None: encoder positions,
  # at most 2048), and a cut in whitespace words or in tokens (None, None: the reference's
  # (max_length - 3) // 2 words in cross mode; bi mode reads its max_tokens windows).
  max_length: int | None = None
  answer_max_words: int | None = None
  answer_max_tokens: int | None = None
  similar_label: int = 1  # the head's output index meaning "similar": p = softmax(z)[similar_label]
  short_rule_words: int | None = 5  # both answers <= this many words: unigram rule; None: off
  head_hidden: int = 0  # bi mode: hidden width E of the feature MLP (0: logistic head)

  def __post_init__(self):
    if not isinstance(self.mode, PairMode):
      raise InputError("classifier.mode", f"must be one of {[m.value for m in PairMode]}, "
                       f"got {self.mode!r}")
    if self.max_tokens < 1:
      raise InputError("classifier.max_tokens", f"must be >= 1, got {self.max_tokens}")
    if self.windows < 1 or (self.windows > 1 and self.mode != PairMode.BI):
      raise InputError("classifier.windows", f"must be 1 in cross mode, >= 1 in bi mode, got "
                       f"{self.windows}")
    check_threshold(self.threshold, "classifier.threshold")
    if self.similar_label not in (0, 1):
      raise InputError("classifier.similar_label", f"must be 0 or 1 (a 2-way head), got "
                       f"{self.similar_label!r}")
    for name in ("max_length", "answer_max_words", "answer_max_tokens"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise InputError(f"classifier.{name}", f"must be a positive integer or null, got {v!r}")
    if self.short_rule_words is not None and self.short_rule_words < 0:
      raise InputError("classifier.short_rule_words", f"must be >= 0 or None, got "
                       f"{self.short_rule_words}")
    if self.bag_tokens < 0:
      raise InputError("classifier.bag_tokens", f"must be >= 0, got {self.bag_tokens}")
    if self.head_hidden < 0:
      raise InputError("classifier.head_hidden", f"must be >= 0, got {self.head_hidden}")

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "mode": self.mode.value}

  @classmethod
  def from_json(cls, d: dict[str, Any], where: str = "classifier.json") -> "ClassifierConfig":
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise InputError(where, f"unknown classifier fields {sorted(unknown)}")
    d = dict(d)
    if "mode" in d:
      try:
        d["mode"] = PairMode(d["mode"])
      except ValueError:
        raise InputError(where, f"mode must be one of {[m.value for m in PairMode]}, "
                         f"got {d['mode']!r}") from None
    return cls(**d)


def check_threshold(tau: float, field: str) -> float:
  """tau as a float, or an InputError naming `field` when it is not a number in [0, 1]."""
  if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
    raise InputError(field, f"must be a number in [0, 1], got {tau!r}")
  return float(tau)


class Statistic(nnx.Variable):
  """A non-trainable array fitted from data (the idf table); saved with the weights."""


def _unit(x: Array) -> Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity_features(
    mean_BxGxD: Float[Array, "B G D"],
    first_BxGxD: Float[Array, "B G D"],
    bag_BxGxV: Float[Array, "B G V"],
    idf_V: Float[Array, "V"],
) -> Float[Array, "B G G 4"]:
  """phi for all G x G pairs of each group (see the module docstring); symmetric in (i, j)."""
  m, f = _unit(mean_BxGxD.astype(jnp.float32)), _unit(first_BxGxD.astype(jnp.float32))
  cos_mean_BxGxG = jnp.einsum("bgd,bhd->bgh", m, m)
  cos_first_BxGxG = jnp.einsum("bgd,bhd->bgh", f, f)
  weighted_BxGxV = bag_BxGxV * jnp.square(idf_V)[None, None, :]
  idf_dot_BxGxG = jnp.einsum("bgv,bhv->bgh", weighted_BxGxV, bag_BxGxV)
  idf_sq_BxG = jnp.diagonal(idf_dot_BxGxG, axis1=1, axis2=2)
  idf_cos_BxGxG = idf_dot_BxGxG / jnp.maximum(
      jnp.sqrt(idf_sq_BxG[:, :, None] * idf_sq_BxG[:, None, :]), 1e-12)
  inter_BxGxG = jnp.einsum("bgv,bhv->bgh", bag_BxGxV, bag_BxGxV)
  size_BxG = bag_BxGxV.sum(-1)
  union_BxGxG = size_BxG[:, :, None] + size_BxG[:, None, :] - inter_BxGxG
  jaccard_BxGxG = inter_BxGxG / jnp.maximum(union_BxGxG, 1.0)
  return jnp.stack([cos_mean_BxGxG, cos_first_BxGxG, idf_cos_BxGxG, jaccard_BxGxG], axis=-1)


class SimilarityHead(nnx.Module):
  """2-way logits from the K similarity features; a logistic head when hidden == 0."""

  def __init__(self, vocab_size: int, hidden: int, *, rngs: nnx.Rngs):
    K = len(FEATURES)
    self.hidden = hidden
    self.idf_V = Statistic(jnp.ones((vocab_size,), jnp.float32), sharding_names=(None,),
                           eager_sharding=False)
    init = nnx.initializers.lecun_normal()
    param = lambda v, names: nnx.Param(v, sharding_names=names, eager_sharding=False)
    if hidden:
      self.w1_KxE = param(init(rngs.params(), (K, hidden), jnp.float32), (None, None))
      self.b1_E = param(jnp.zeros((hidden,), jnp.float32), (None,))
    self.w2_ExC = param(init(rngs.params(), (hidden or K, 2), jnp.float32), (None, None))
    self.b2_C = param(jnp.zeros((2,), jnp.float32), (None,))

  def __call__(self, phi: Float[Array, "... K"]) -> Float[Array, "... 2"]:
    lead = lambda b: b.reshape((1,) * (phi.ndim - 1) + b.shape)
    h = phi
    if self.hidden:
      h = jax.nn.gelu(h @ self.w1_KxE[...] + lead(self.b1_E[...]), approximate=False)
    return h @ self.w2_ExC[...] + lead(self.b2_C[...])


class PairClassifier(nnx.Module):
  """An encoder (any family of darling_jax.models.encoders) plus the mode's 2-way scoring."""

  def __init__(self, encoder: nnx.Module, config: ClassifierConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = encoder
    match config.mode:
      case PairMode.CROSS:
        if encoder.config.num_labels != 2:
          raise InputError("classifier encoder", "cross mode needs an encoder with a 2-way head "
                           f"(num_labels=2), got num_labels={encoder.config.num_labels}")
      case PairMode.BI:
        self.head = SimilarityHead(encoder.config.vocab_size, config.head_hidden, rngs=rngs)

  def embed(self, input_ids: Int[Array, "P L"], attention_mask: Int[Array, "P L"],
            token_type_ids: Int[Array, "P L"] | None = None) -> Float[Array, "P D"]:
    """Unit-norm masked-mean embeddings of answer windows (bi mode)."""
    _, out = self.encoder(input_ids, attention_mask, token_type_ids)
    return _unit(out["mean"].astype(jnp.float32))

  def bi_logits(self, mean_BxGxD: Array, first_BxGxD: Array, bag_BxGxV: Array
                ) -> Float[Array, "B G G 2"]:
    """Logits for all G x G pairs of each group from per-answer representations (bi mode)."""
    phi = similarity_features(mean_BxGxD, first_BxGxD, bag_BxGxV, self.head.idf_V[...])
    return self.head(phi)

  def cross_logits(self, input_ids: Int[Array, "P L"], attention_mask: Int[Array, "P L"],
                   token_type_ids: Int[Array, "P L"] | None = None) -> Float[Array, "P 2"]:
    """Logits of `[CLS] a [SEP] b [SEP]` rows (cross mode)."""
    logits, _ = self.encoder(input_ids, attention_mask, token_type_ids)
    return logits.astype(jnp.float32)
