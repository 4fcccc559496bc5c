"""Tests `darling_jax/diversity/pair_scoring.py` (+ pair_batches.py) on a tiny random encoder.

The reference for every number is the classifier applied to one pair (or one answer) at a time on
unpadded inputs; the one jitted, bucketed, micro-batched call over all groups must equal it.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.diversity.classifier import PairMode, similarity_features
from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes, scoring_mesh
from darling_jax.errors import InputError

_spec = importlib.util.spec_from_file_location(
    "diversity_tiny_classifier", pathlib.Path(__file__).with_name("tiny_classifier.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

TOL = 1e-5
SHAPES = ScoringShapes(micro_batch=8, min_rows=8, min_length=8)


def _groups(seed=0, B=2, lengths=(3, 9, 17, 7, 12)):
  rng = np.random.default_rng(seed)
  return [[tiny.text(rng, n) for n in lengths] for _ in range(B)]


REF_LEN = 48  # the per-pair reference pads every single row to this length (not a bucket)


def _one_row(ids, types=None):
  """One row padded to REF_LEN (padding invariance itself is tested in test_bert.py)."""
  pad = REF_LEN - len(ids)
  x = lambda v: jnp.asarray([list(v) + [0] * pad], jnp.int32)
  return x(ids), x([1] * len(ids)), x(types if types is not None else [0] * len(ids))


@nnx.jit
def _cross_logits(clf, ids, mask, types):
  return clf.cross_logits(ids, mask, types)


@nnx.jit
def _embed(clf, ids, mask):
  return clf.embed(ids, mask)


def _cross_one(clf, tok, a, b):
  ids, types = tok.pair(*tok.encode([a, b], clf.config.answer_max_tokens))
  logits = _cross_logits(clf, *_one_row(ids, types))
  return float(jax.nn.softmax(logits, -1)[0, 1])


def _bi_one(clf, tok, a, b):
  """One pair, each window encoded alone (no padding), features and head by hand."""
  c = clf.config

  def answer(text):
    ids = tok.encode([text], c.max_tokens * c.windows)[0]
    embs = []
    for w in range(max(1, -(-len(ids) // c.max_tokens))):
      row = tok.single(ids[w * c.max_tokens:(w + 1) * c.max_tokens])
      ids_1xL, mask_1xL, _ = _one_row(row)
      embs.append(_embed(clf, ids_1xL, mask_1xL)[0])
    bag = np.zeros(clf.encoder.config.vocab_size, np.float32)
    bag[tok.encode([text], c.bag_tokens)[0]] = 1.0
    return sum(embs), embs[0], bag

  (ma, fa, ba), (mb, fb, bb) = answer(a), answer(b)
  stack = lambda u, v: jnp.stack([u, v])[None]
  phi = similarity_features(stack(ma, mb), stack(fa, fb), stack(ba, bb), clf.head.idf_V[...])
  return float(jax.nn.softmax(clf.head(phi), -1)[0, 0, 1, 1])


@pytest.mark.parametrize("symmetric", [True, False])
def test_cross_all_pairs_equal_per_pair(symmetric):
  clf = tiny.classifier(PairMode.CROSS, answer_max_tokens=10, symmetric=symmetric)
  tok = tiny.tokenizer()
  groups = _groups()
  probs = np.asarray(PairScorer(clf, tok, SHAPES)(groups))
  assert probs.shape == (2, 5, 5)
  for b, grp in enumerate(groups):
    for i in range(5):
      assert probs[b, i, i] == 1.0
      for j in range(i + 1, 5):
        p_ij = _cross_one(clf, tok, grp[i], grp[j])
        p_ji = _cross_one(clf, tok, grp[j], grp[i])
        want = 0.5 * (p_ij + p_ji) if symmetric else p_ij
        np.testing.assert_allclose(probs[b, i, j], want, atol=TOL)
        np.testing.assert_allclose(probs[b, j, i], want, atol=TOL)
  if not symmetric:  # the two orders really differ, so the symmetric option is not a no-op
    assert abs(_cross_one(clf, tok, groups[0][0], groups[0][1])
               - _cross_one(clf, tok, groups[0][1], groups[0][0])) > 1e-4


def test_bi_all_pairs_equal_per_pair():
  clf = tiny.classifier(PairMode.BI, max_tokens=6, windows=2, bag_tokens=14)
  tok = tiny.tokenizer()
  groups = _groups(seed=1)
  probs = np.asarray(PairScorer(clf, tok, SHAPES)(groups))
  np.testing.assert_array_equal(probs, probs.transpose(0, 2, 1))
  for b, grp in enumerate(groups):
    for i in range(5):
      for j in range(i + 1, 5):
        np.testing.assert_allclose(probs[b, i, j], _bi_one(clf, tok, grp[i], grp[j]), atol=TOL)


@pytest.mark.parametrize("mode", list(PairMode))
def test_bucketed_equals_unbucketed_and_group_order(mode):
  clf = tiny.classifier(mode, max_tokens=10)
  # Both orders: one order per pair (the default) is not invariant to permuting a group.
  scorer = PairScorer(clf, tiny.tokenizer(), SHAPES, symmetric=True)
  groups = _groups(seed=2, lengths=(3, 9, 6, 7, 4))
  rows = scorer.rows(groups)
  exact = scorer.rows(groups, bucketed=False)
  assert rows.input_ids_PxL.shape[1] > exact.input_ids_PxL.shape[1]  # really padded further
  a = np.asarray(scorer.score_rows(rows))
  np.testing.assert_allclose(a, np.asarray(scorer.score_rows(exact)), atol=TOL)
  # Reordering groups reorders the output; permuting answers inside a group permutes it.
  np.testing.assert_allclose(np.asarray(scorer(groups[::-1])), a[::-1], atol=TOL)
  perm = [3, 0, 4, 2, 1]
  permuted = np.asarray(scorer([[g[k] for k in perm] for g in groups]))
  np.testing.assert_allclose(permuted, a[:, perm][:, :, perm], atol=TOL)


@pytest.mark.parametrize("mode", list(PairMode))
def test_short_rule_pairs_bypass_the_model(mode):
  clf = tiny.classifier(mode, max_tokens=10)
  scorer = PairScorer(clf, tiny.tokenizer(), SHAPES)
  rng = np.random.default_rng(3)
  # Answers 0-2 are short (<= 5 words): pairs among them are the rule's; 0 and 1 share words.
  group = ["w1 w2 w3", "w1 w2 w9", "w50 w51", tiny.text(rng, 12), tiny.text(rng, 15)]
  rows = scorer.rows([group])
  model_pairs = {(int(g), int(i), int(j)) for g, i, j, v in zip(
      rows.group_P, rows.first_P, rows.second_P, rows.valid_P) if v}
  probs = np.asarray(scorer.score_rows(rows))[0]
  assert probs[0, 1] == 1.0 and probs[0, 2] == 0.0 and probs[1, 2] == 0.0
  if mode == PairMode.CROSS:
    assert not any(i < 3 and j < 3 for _, i, j in model_pairs)
    assert len(model_pairs) == 10 - 3  # the 7 model-scored pairs, one order each (i < j)
  off = scorer([group])  # same numbers with the rule disabled would differ for the short pairs
  np.testing.assert_allclose(np.asarray(off)[0], probs, atol=TOL)
  clf_off = tiny.classifier(mode, max_tokens=10, short_rule_words=None)
  no_rule = np.asarray(PairScorer(clf_off, tiny.tokenizer(), SHAPES)([group]))[0]
  assert 0.0 < no_rule[0, 2] < 1.0
  np.testing.assert_allclose(no_rule[3:, :], probs[3:, :], atol=TOL)


def test_score_pairs_and_bad_input():
  clf = tiny.classifier(PairMode.BI, max_tokens=10)
  scorer = PairScorer(clf, tiny.tokenizer(), SHAPES)
  groups = _groups(seed=4, B=1)
  a, b = groups[0][:2], groups[0][2:4]
  flat = scorer.score_pairs(a, b, batch_groups=1)
  full = np.asarray(scorer([[a[0], b[0]], [a[1], b[1]]]))
  np.testing.assert_allclose(flat, full[:, 0, 1], atol=TOL)
  with pytest.raises(InputError, match="same size|groups\\[1\\]"):
    scorer([["w1 w2", "w3"], ["w4"]])
  with pytest.raises(InputError, match=">= 2 answers"):
    scorer([["w1"]])
  with pytest.raises(InputError, match="must be a string"):
    scorer([["w1", 3]])


@pytest.mark.parametrize("mode", list(PairMode))
def test_rows_split_over_a_device_mesh_equal_one_device(mode):
  assert jax.local_device_count() == 8  # tests/conftest.py forces 8 host devices
  bi_extras = dict(windows=2, bag_tokens=14) if mode == PairMode.BI else {}
  clf = tiny.classifier(mode, max_tokens=6, **bi_extras)
  tok = tiny.tokenizer()
  one = PairScorer(clf, tok, SHAPES)
  mesh = scoring_mesh()
  many = PairScorer(clf, tok, SHAPES, mesh=mesh)
  groups = _groups(seed=5, B=3)
  rows = many.rows(groups)
  assert rows.input_ids_PxL.shape[0] % (8 * SHAPES.micro_batch) == 0  # whole micro-batches each
  for leaf in jax.tree.leaves(many.state):
    assert leaf.sharding.mesh == mesh and leaf.sharding.is_fully_replicated
  np.testing.assert_allclose(np.asarray(many(groups)), np.asarray(one(groups)), atol=TOL)
  if mode == PairMode.BI:
    np.testing.assert_allclose(np.asarray(many.features(groups)),
                               np.asarray(one.features(groups)), atol=TOL)
  with pytest.raises(InputError, match="scorer mesh"):
    PairScorer(clf, tok, SHAPES, mesh=jax.make_mesh((8,), ("data",)))
