"""Equivalence probabilities for every pair of every group, from one jitted call.

`PairScorer(classifier, tokenizer)(groups)` takes B groups of G answer strings and returns
probs_BxGxG with probs[b, i, j] = P(y_bi ~ y_bj): symmetric, diagonal 1. On the host the answers are
tokenised in one batch (`pair_batches.build_rows`), the short-answer rule settles the pairs it
covers, and the remaining rows are padded to bucketed shapes. The device then runs one jitted
function: the encoder over the rows in micro-batches (`lax.map`, so memory stays bounded however
many groups arrive), the mode's scoring, and the scatter back into [B, G, G]. Given a
`scoring_mesh()`, the rows are split over its devices and each device maps its own block (the
trainer does this on every host's local devices):

  cross: p(i, j) = softmax(z(i, j))[similar_label], scored once per unordered pair i < j and
         mirrored (the reference); symmetric: p_ij = (p(i, j) + p(j, i)) / 2.
  bi:    window embeddings pooled per answer into [B, G, D] (mean and first window) and token bags
         into [B, G, V]; then p_ij = softmax(head(phi_ij))[1] for all G x G pairs at once from
         Gram matrices (exactly symmetric; see classifier.py for phi).
  both:  p_ij = 1[rule says equivalent] where the short rule applies; p_ii = 1.

A classifier whose family shards its weights like the policy (a decoder classifier,
`SHARDED_WEIGHTS`) takes a policy-style mesh (axes data, fsdp, tensor; `sharded_scoring_mesh()`)
instead: its weights are placed by DEFAULT_RULES (FSDP), never replicated, and XLA's partitioner
splits each micro-batch's rows over (data, fsdp).

Axis letters: B groups, G answers per group, P rows, M micro-batches, R rows per micro-batch,
L length, D width.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from darling_jax.diversity import answer_length
from darling_jax.diversity.classifier import (PairClassifier, PairMode, check_threshold,
                                              similarity_features)
from darling_jax.diversity.pair_batches import PairRows, build_rows, geometric_buckets
from darling_jax.errors import InputError
from darling_jax.models.encoders import EncoderTokenizer


@dataclasses.dataclass(frozen=True)
class ScoringShapes:
  """Static-shape policy: rows per micro-batch and the buckets rows/lengths are padded to."""

  micro_batch: int = 64  # rows per encoder call inside lax.map (CPU: 32-64; GPU: 512+)
  min_rows: int = 64  # smallest padded row count; buckets double from here
  max_rows_bucket: int = 65536  # past this, the row count rounds up to multiples of it
  min_length: int = 16  # smallest padded row length; buckets double up to the longest row

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if getattr(self, f.name) < 1:
        raise InputError(f"scoring.{f.name}", f"must be >= 1, got {getattr(self, f.name)}")


ROWS_AXIS = "rows"  # the scorer's own 1-D mesh axis: pair rows are split across it


def scoring_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over this host's devices (default: all local ones) for PairScorer.

  Local devices only: in a multi-host run each host scores the groups it sampled, so the scorer
  never needs cross-host traffic.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (ROWS_AXIS,))


def sharded_scoring_mesh(devices: Sequence[jax.Device] | None = None, fsdp: int = -1) -> Mesh:
  """A (data, fsdp, tensor) mesh over this host's devices for a classifier with sharded weights:
  all of them on fsdp by default, as the policy's FSDP rules expect."""
  from darling_jax.sharding.mesh import AXES

  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  f = n if fsdp == -1 else fsdp
  if f < 1 or n % f:
    raise InputError("scorer mesh", f"fsdp={fsdp} does not divide {n} devices")
  return Mesh(np.asarray(devices).reshape(n // f, f, 1), AXES)


def _is_rows_mesh(mesh: Mesh | None) -> bool:
  return mesh is not None and mesh.axis_names == (ROWS_AXIS,)


def _micro(x: Array, micro_batch: int) -> Array:
  """[P, ...] -> [P / R, R, ...] for lax.map over micro-batches of R rows."""
  return x.reshape(x.shape[0] // micro_batch, micro_batch, *x.shape[1:])


def map_rows(apply: Callable[..., Array], arrays: Sequence[Array], micro_batch: int) -> Array:
  """apply(*[R, ...] arrays) -> [R, ...] over all P rows, `micro_batch` rows per call."""
  out_MxR = jax.lax.map(lambda r: apply(*r), tuple(_micro(x, micro_batch) for x in arrays))
  return out_MxR.reshape(arrays[0].shape[0], *out_MxR.shape[2:])


def encode_rows(graphdef, state, apply: Callable[..., Array], arrays: Sequence[Array],
                micro_batch: int, mesh: Mesh | None) -> Array:
  """map_rows of apply(classifier, *rows); with a mesh, each device maps its own block of rows.

  shard_map rather than sharding annotations: lax.map over a row axis split across devices would
  otherwise be gathered to one device first. Weights enter replicated.
  """
  def local(state, *arrays):
    clf = nnx.merge(graphdef, state)
    return map_rows(lambda *r: apply(clf, *r), arrays, micro_batch)

  if mesh is None:
    return local(state, *arrays)
  if not _is_rows_mesh(mesh):  # sharded weights: GSPMD, rows of a micro-batch over (data, fsdp)
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def constrained(clf, *r):
      if r[0].shape[0] % batch_ways == 0:
        r = [jax.lax.with_sharding_constraint(x, spec) for x in r]
      return apply(clf, *r)

    clf = nnx.merge(graphdef, state)
    return map_rows(lambda *r: constrained(clf, *r), arrays, micro_batch)
  rows = PartitionSpec(ROWS_AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), *[rows] * len(arrays)),
                       out_specs=rows)(state, *arrays)


def device_rows(rows: PairRows, mesh: Mesh | None = None) -> dict[str, Array]:
  """The PairRows arrays as device arrays (one explicit host -> device transfer).

  With a mesh, the per-row arrays (*_P, *_PxL) are split over its rows axis and the rest
  replicated.
  """
  out = {}
  for f in dataclasses.fields(rows):
    x = getattr(rows, f.name)
    if not _is_rows_mesh(mesh):  # one device, or sharded weights (the partitioner splits rows)
      out[f.name] = jnp.asarray(x)
    else:
      per_row = f.name.endswith(("_P", "_PxL"))
      spec = PartitionSpec(ROWS_AXIS) if per_row else PartitionSpec()
      out[f.name] = jax.device_put(x, NamedSharding(mesh, spec))
  return out


def bi_args(rows: dict[str, Array]) -> tuple[Array, ...]:
  """The row arrays bi_group_reprs reads, in its argument order."""
  return tuple(rows[k] for k in ("input_ids_PxL", "attention_mask_PxL", "group_P", "first_P",
                                 "second_P", "valid_P", "bag_ids_AxT", "bag_mask_AxT",
                                 "bag_group_A", "bag_answer_A"))


def _cross(clf: PairClassifier, ids: Array, mask: Array, types: Array) -> Array:
  return clf.cross_logits(ids, mask, types)


def _embed(clf: PairClassifier, ids: Array, mask: Array) -> Array:
  return clf.embed(ids, mask, None)


def cross_row_logits(clf: PairClassifier, input_ids_PxL: Array, mask_PxL: Array,
                     types_PxL: Array, micro_batch: int) -> Float[Array, "P 2"]:
  """Cross-encoder logits of every pair row, `micro_batch` rows per encoder call."""
  return map_rows(functools.partial(_cross, clf), (input_ids_PxL, mask_PxL, types_PxL),
                  micro_batch)


def pool_answers(emb_PxD: Array, group_P: Array, answer_P: Array, window_P: Array,
                 valid_P: Array, bag_ids_AxT: Array, bag_mask_AxT: Array, bag_group_A: Array,
                 bag_answer_A: Array, num_groups: int, group_size: int, vocab_size: int
                 ) -> tuple[Array, Array, Array]:
  """Window embeddings -> per-answer (mean_BxGxD, first_BxGxD, bag_BxGxV)."""
  B, G, V = num_groups, group_size, vocab_size
  emb_PxD = emb_PxD * valid_P[:, None].astype(jnp.float32)
  D = emb_PxD.shape[-1]
  # Windows of one answer are summed (mean direction); the head's cosines renormalise.
  mean_BxGxD = jnp.zeros((B, G, D), jnp.float32).at[group_P, answer_P].add(emb_PxD)
  first_PxD = emb_PxD * (window_P == 0)[:, None].astype(jnp.float32)
  first_BxGxD = jnp.zeros((B, G, D), jnp.float32).at[group_P, answer_P].add(first_PxD)
  bag_BxGxV = jnp.zeros((B, G, V), jnp.float32).at[
      bag_group_A[:, None], bag_answer_A[:, None], bag_ids_AxT].max(
          bag_mask_AxT.astype(jnp.float32))
  return mean_BxGxD, first_BxGxD, bag_BxGxV


def bi_group_reprs(clf: PairClassifier, input_ids_PxL: Array, mask_PxL: Array, *pooling_args,
                   micro_batch: int) -> tuple[Array, Array, Array]:
  """Per-answer (mean_BxGxD, first_BxGxD, bag_BxGxV): encode answer windows and pool them.

  pooling_args: pool_answers' arguments after emb_PxD, up to group_size.
  """
  emb_PxD = map_rows(functools.partial(_embed, clf), (input_ids_PxL, mask_PxL), micro_batch)
  return pool_answers(emb_PxD, *pooling_args, clf.encoder.config.vocab_size)


def bi_group_logits(clf: PairClassifier, *rows_and_shape, micro_batch: int
                    ) -> Float[Array, "B G G 2"]:
  """Bi-encoder logits for all G x G pairs (arguments as bi_group_reprs)."""
  return clf.bi_logits(*bi_group_reprs(clf, *rows_and_shape, micro_batch=micro_batch))


def _bi_reprs(graphdef, state, rows: dict[str, Array], num_groups: int, group_size: int,
              micro_batch: int, mesh: Mesh | None) -> tuple[Array, Array, Array]:
  args = bi_args(rows)
  emb_PxD = encode_rows(graphdef, state, _embed, args[:2], micro_batch, mesh)
  vocab = nnx.merge(graphdef, state).encoder.config.vocab_size
  return pool_answers(emb_PxD, *args[2:], num_groups, group_size, vocab)


@functools.partial(jax.jit, static_argnames=("graphdef", "micro_batch", "num_groups",
                                             "group_size", "mesh"))
def _bi_features(graphdef, state, rows: dict[str, Array], *, micro_batch: int, num_groups: int,
                 group_size: int, mesh: Mesh | None = None):
  reprs = _bi_reprs(graphdef, state, rows, num_groups, group_size, micro_batch, mesh)
  return similarity_features(*reprs, nnx.merge(graphdef, state).head.idf_V[...])


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "micro_batch", "num_groups",
                                             "group_size", "mesh", "similar_label"))
def _score_rows(graphdef, state, rows: dict[str, Array], *, mode: PairMode, micro_batch: int,
                num_groups: int, group_size: int, mesh: Mesh | None = None,
                similar_label: int = 1):
  clf: PairClassifier = nnx.merge(graphdef, state)
  B, G = num_groups, group_size
  group_P, first_P, second_P = rows["group_P"], rows["first_P"], rows["second_P"]
  match mode:
    case PairMode.CROSS:
      logits_Px2 = encode_rows(graphdef, state, _cross, (rows["input_ids_PxL"],
                               rows["attention_mask_PxL"], rows["token_type_ids_PxL"]),
                               micro_batch, mesh)
      p_P = jax.nn.softmax(logits_Px2, axis=-1)[:, similar_label]
      w_P = rows["valid_P"].astype(jnp.float32)
      sums_BxGxG = jnp.zeros((B, G, G), jnp.float32).at[group_P, first_P, second_P].add(p_P * w_P)
      cnt_BxGxG = jnp.zeros((B, G, G), jnp.float32).at[group_P, first_P, second_P].add(w_P)
      # Fold (j, i) onto (i, j): with both orders scored this is their mean; with one, a mirror.
      sums_BxGxG = sums_BxGxG + sums_BxGxG.transpose(0, 2, 1)
      cnt_BxGxG = cnt_BxGxG + cnt_BxGxG.transpose(0, 2, 1)
      probs_BxGxG = sums_BxGxG / jnp.maximum(cnt_BxGxG, 1.0)
    case PairMode.BI:
      reprs = _bi_reprs(graphdef, state, rows, B, G, micro_batch, mesh)
      probs_BxGxG = jax.nn.softmax(clf.bi_logits(*reprs), axis=-1)[..., similar_label]
      # The features are symmetric in exact arithmetic; average away float rounding differences.
      probs_BxGxG = 0.5 * (probs_BxGxG + probs_BxGxG.transpose(0, 2, 1))
  probs_BxGxG = jnp.where(rows["rule_applies_BxGxG"],
                          rows["rule_equivalent_BxGxG"].astype(jnp.float32), probs_BxGxG)
  eye_1xGxG = jnp.eye(G, dtype=bool)[None]
  return jnp.where(eye_1xGxG, 1.0, probs_BxGxG)


class PairScorer:
  """Scores all pairs of groups of answers with a PairClassifier (see module docstring)."""

  def __init__(self, classifier: PairClassifier, tokenizer: EncoderTokenizer,
               shapes: ScoringShapes = ScoringShapes(), mesh: Mesh | None = None, *,
               symmetric: bool | None = None, threshold: float | None = None,
               answer_max_words: int | None = None, answer_max_tokens: int | None = None,
               length_source: str = "classifier"):
    """
    Args:
      mesh: None scores on the default device; a `scoring_mesh()` splits the rows across its
        devices (weights replicated on each), which is what the trainer uses; a classifier with
        sharded weights takes a `sharded_scoring_mesh()` instead.
      symmetric: cross mode: average both orders of each pair (None: the classifier's setting,
        False unless its folder says otherwise: one order, as the reference).
      threshold: tau of `equivalent` (None: the classifier's calibrated one).
      answer_max_words / answer_max_tokens: replace the classifier's per-answer cut (both None:
        keep the folder's); see answer_length.py. length_source names them in errors.

    Raises:
      InputError: a threshold outside [0, 1], an answer length the encoder cannot hold, or a
        mesh of the wrong kind; all before anything compiles.
    """
    self.classifier = classifier
    self.tokenizer = tokenizer
    self.shapes = shapes
    self.mesh = mesh
    c = classifier.config
    self.symmetric = c.symmetric if symmetric is None else bool(symmetric)
    self.threshold = check_threshold(c.threshold if threshold is None else threshold,
                                     "threshold" if threshold is not None else
                                     "classifier.threshold")
    if answer_max_words is None and answer_max_tokens is None:
      answer_max_words, answer_max_tokens = c.answer_max_words, c.answer_max_tokens
    self.cut = answer_length.resolve(
        cross=c.mode == PairMode.CROSS,
        max_positions=classifier.encoder.config.max_position_embeddings,
        pair_overhead=tokenizer.pair_overhead, window_tokens=c.max_tokens,
        max_length=c.max_length, answer_max_words=answer_max_words,
        answer_max_tokens=answer_max_tokens, source=length_source)
    self.graphdef, self.state = nnx.split(classifier)
    sharded = getattr(classifier.encoder, "SHARDED_WEIGHTS", False)
    if mesh is not None:
      if sharded:
        from darling_jax.sharding.mesh import AXES
        from darling_jax.sharding.rules import DEFAULT_RULES, state_shardings

        if mesh.axis_names != AXES:
          raise InputError("scorer mesh", f"a classifier with sharded weights needs axes {AXES} "
                           f"(see sharded_scoring_mesh), got {mesh.axis_names}")
        self.state = jax.device_put(self.state,
                                    state_shardings(self.state, mesh, DEFAULT_RULES))
      else:
        if not _is_rows_mesh(mesh):
          raise InputError("scorer mesh", f"expected one axis {ROWS_AXIS!r} (see scoring_mesh), "
                           f"got {mesh.axis_names}")
        self.state = jax.device_put(self.state, NamedSharding(mesh, PartitionSpec()))

  @property
  def row_multiple(self) -> int:
    """Padded row counts are multiples of this: whole micro-batches on every device."""
    return self.shapes.micro_batch * (self.mesh.size if _is_rows_mesh(self.mesh) else 1)

  @classmethod
  def load(cls, folder, shapes: ScoringShapes = ScoringShapes(), mesh: Mesh | None = None,
           **options) -> "PairScorer":
    """A scorer for a classifier folder (`classifier train` output or a HF
    *ForSequenceClassification folder); options as __init__'s."""
    from darling_jax.diversity.classifier_io import load_classifier

    clf, tok, _ = load_classifier(folder)
    return cls(clf, tok, shapes, mesh, **options)

  def rows(self, groups: Sequence[Sequence[str]], *, symmetric: bool | None = None,
           bucketed: bool = True) -> PairRows:
    """The host-side rows for `groups` (exposed for tests and benchmarks)."""
    c, s = self.classifier.config, self.shapes
    symmetric = self.symmetric if symmetric is None else symmetric
    cross = c.mode == PairMode.CROSS
    longest = self.cut.longest_row(cross, self.tokenizer.pair_overhead)
    return build_rows(
        groups, self.tokenizer, cross=cross, max_tokens=self.cut.tokens, symmetric=symmetric,
        short_rule_words=c.short_rule_words,
        row_buckets=geometric_buckets(s.min_rows, s.max_rows_bucket) if bucketed else (1,),
        length_buckets=geometric_buckets(min(s.min_length, longest), longest) if bucketed else (1,),
        row_multiple=self.row_multiple, windows=c.windows, bag_tokens=c.bag_tokens,
        max_words=self.cut.words, pair_tokens=self.cut.pair_tokens,
    )

  def score_rows(self, rows: PairRows) -> Float[Array, "B G G"]:
    """The jitted device call on prepared rows."""
    B, G, _ = rows.rule_applies_BxGxG.shape
    probs = _score_rows(self.graphdef, self.state, device_rows(rows, self.mesh),
                        mode=self.classifier.config.mode, micro_batch=self.shapes.micro_batch,
                        num_groups=B, group_size=G, mesh=self.mesh,
                        similar_label=self.classifier.config.similar_label)
    chex.assert_shape(probs, (B, G, G))
    return probs

  def __call__(self, groups: Sequence[Sequence[str]], *, symmetric: bool | None = None,
               bucketed: bool = True) -> Float[Array, "B G G"]:
    """probs_BxGxG for B groups of G answers (the prompt is not part of the input)."""
    return self.score_rows(self.rows(groups, symmetric=symmetric, bucketed=bucketed))

  def score_pairs(self, first: Sequence[str], second: Sequence[str], *,
                  batch_groups: int = 1024) -> np.ndarray:
    """P(similar) of N independent (a, b) pairs, as groups of two, `batch_groups` per call."""
    if len(first) != len(second):
      raise InputError("pairs", f"{len(first)} first answers but {len(second)} second answers")
    out = []
    for s in range(0, len(first), batch_groups):
      groups = [[a, b] for a, b in zip(first[s:s + batch_groups], second[s:s + batch_groups])]
      n = len(groups)
      if len(first) > batch_groups:
        # Pad the tail to the same group count, so it reuses the compiled shape. Empty answers are
        # settled by the short rule (when on) and add no encoder rows.
        groups += [["", ""]] * (batch_groups - n)
      out.append(np.asarray(self(groups))[:n, 0, 1])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def features(self, groups: Sequence[Sequence[str]]) -> Float[Array, "B G G K"]:
    """Bi mode: the head's similarity features phi for all pairs (no short rule applied)."""
    if self.classifier.config.mode != PairMode.BI:
      raise InputError("features", "similarity features exist in bi mode only")
    c, s = self.classifier.config, self.shapes
    # Every pair must reach the model here: no short-rule bypass.
    longest = self.cut.longest_row(False, self.tokenizer.pair_overhead)
    rows = build_rows(
        groups, self.tokenizer, cross=False, max_tokens=self.cut.tokens, symmetric=False,
        short_rule_words=None, row_buckets=geometric_buckets(s.min_rows, s.max_rows_bucket),
        length_buckets=geometric_buckets(min(s.min_length, longest), longest),
        row_multiple=self.row_multiple, windows=c.windows, bag_tokens=c.bag_tokens,
        max_words=self.cut.words)
    B, G, _ = rows.rule_applies_BxGxG.shape
    return _bi_features(self.graphdef, self.state, device_rows(rows, self.mesh),
                        micro_batch=s.micro_batch, num_groups=B, group_size=G, mesh=self.mesh)

  def equivalent(self, groups: Sequence[Sequence[str]]) -> jax.Array:
    """The equivalence graph: probs > tau (bool [B, G, G], reflexive and symmetric)."""
    return self(groups) > self.threshold


def load_scorer(folder, shapes: ScoringShapes = ScoringShapes(), *, on_local_devices: bool = True,
                similar_label: int | None = None, **options) -> PairScorer:
  """A PairScorer for a classifier folder (`classifier train` output or HF
  *ForSequenceClassification), on this host's devices by default: an encoder's rows split over
  them (`scoring_mesh`), a decoder classifier's weights FSDP-sharded over them
  (`sharded_scoring_mesh`), loaded straight into that sharding. options: PairScorer's."""
  from darling_jax.diversity.classifier_io import (is_hf_classifier_folder, load_classifier,
                                                   read_meta)
  from darling_jax.models import encoders

  if is_hf_classifier_folder(folder):
    model_type = encoders.read_hf_config(folder).get("model_type")
  else:
    model_type = read_meta(folder)["classifier"].get("model_type")
  sharded = encoders.is_decoder_family(model_type)
  mesh = None
  if on_local_devices:
    mesh = sharded_scoring_mesh() if sharded else scoring_mesh()
  clf, tok, _ = load_classifier(folder, mesh=mesh if sharded else None,
                                similar_label=similar_label)
  return PairScorer(clf, tok, shapes, mesh, **options)
