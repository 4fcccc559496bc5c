"""Tests `darling_jax/diversity/answer_length.py` and the pair order of PairScorer against a
plain-Python reference of the reference's scoring (one pair at a time, i < j, mirrored)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.diversity import answer_length
from darling_jax.diversity.classifier import ClassifierConfig, PairMode
from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes
from darling_jax.diversity.short_rule import short_pair_verdict
from darling_jax.errors import InputError

_spec = importlib.util.spec_from_file_location(
    "diversity_tiny_classifier", pathlib.Path(__file__).with_name("tiny_classifier.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

TOL = 1e-5
SHAPES = ScoringShapes(micro_batch=8, min_rows=8, min_length=8)
MAX_POS = 64  # bert.Config.tiny(): default cut (64 - 3) // 2 = 30 words, pair budget 61 tokens


def test_longest_first_equals_hf_tokenizers_pair_truncation():
  tok = tiny.hf_tokenizer()
  rng = np.random.default_rng(0)
  for la, lb, budget in [(3, 4, 10), (20, 3, 10), (3, 20, 10), (20, 20, 11), (7, 7, 9),
                         (30, 12, 25), (12, 30, 25), (6, 5, 11), (9, 40, 16)]:
    a, b = tiny.text(rng, la), tiny.text(rng, lb)
    tok.enable_truncation(max_length=budget, strategy="longest_first")
    enc = tok.encode(a, b, add_special_tokens=False)
    want = (int(np.sum(np.asarray(enc.type_ids) == 0)), int(np.sum(np.asarray(enc.type_ids) == 1)))
    assert answer_length.longest_first(la, lb, budget) == want, (la, lb, budget)


def test_cut_words_keeps_text_verbatim():
  assert answer_length.cut_words("a  b\nc d", 3) == "a  b\nc"
  assert answer_length.cut_words("  a b ", 5) == "  a b "
  assert answer_length.cut_words("a b", None) == "a b"


def test_resolve_defaults_and_errors():
  r = lambda **kw: answer_length.resolve(cross=True, max_positions=8192, pair_overhead=3,  # noqa
                                         window_tokens=128, **kw)
  assert r().words == 1022 and r().pair_tokens == 2045  # ModernBERT at the default 2048
  assert r(max_length=4096).words == 2046
  assert r(answer_max_tokens=128) == answer_length.AnswerCut(None, 128, None)  # NoveltyBench
  with pytest.raises(InputError, match="diversity.answer_max_tokens"):
    r(answer_max_tokens=1023, source="diversity")
  with pytest.raises(InputError, match="--answer-max-words"):
    r(answer_max_words=1100, source="--")
  with pytest.raises(InputError, match="classifier.max_length"):
    r(max_length=9000)
  with pytest.raises(InputError, match="classifier.answer_max_words"):
    r(answer_max_words=0)
  with pytest.raises(InputError, match="classifier.max_tokens"):
    answer_length.resolve(cross=False, max_positions=64, pair_overhead=3, window_tokens=128)
  with pytest.raises(InputError, match="threshold"):
    ClassifierConfig(threshold=-0.1)


@nnx.jit
def _logits(clf, ids, mask, types):
  return clf.cross_logits(ids, mask, types)


def _reference_probs(clf, tok, group, words, budget, symmetric=False):
  """The reference's scoring, one pair at a time in plain Python: each answer cut to `words`
  whitespace words, the pair tokenised and truncated longest-first to `budget` answer tokens,
  `[CLS] a [SEP] b [SEP]`, p = softmax[1]; i < j scored once and mirrored; short rule first."""
  G = len(group)
  out = np.eye(G)

  def p(a, b):
    ia, ib = tok.encode([" ".join(a.split()[:words]), " ".join(b.split()[:words])], 10**6)
    na, nb = answer_length.longest_first(len(ia), len(ib), budget)
    ids, types = tok.pair(ia[:na], ib[:nb])
    # One padded length, so the reference compiles once (padding invariance: test_bert.py).
    x = lambda v: jnp.asarray([list(v) + [0] * (MAX_POS - len(v))], jnp.int32)  # noqa: E731
    return float(jax.nn.softmax(_logits(clf, x(ids), x([1] * len(ids)), x(types)), -1)[0, 1])

  for i in range(G):
    for j in range(i + 1, G):
      rule = short_pair_verdict(group[i], group[j])
      if rule is not None:
        v = float(rule)
      else:
        v = p(group[i], group[j])
        if symmetric:
          v = 0.5 * (v + p(group[j], group[i]))
      out[i, j] = out[j, i] = v
  return out


@pytest.mark.parametrize("symmetric", [False, True])
def test_scorer_equals_plain_python_reference(symmetric):
  clf = tiny.classifier(PairMode.CROSS)  # default cut: 30 words, 61-token pair budget
  tok = tiny.tokenizer()
  rng = np.random.default_rng(1)
  # Answers of 40 words (cut to 30), 45 and 12 (longest-first truncation), and a short pair.
  groups = [[tiny.text(rng, n) for n in (40, 12, 45, 3, 2)],
            [tiny.text(rng, n) for n in (8, 33, 20, 50, 4)]]
  scorer = PairScorer(clf, tok, SHAPES, symmetric=symmetric or None)
  assert scorer.cut == answer_length.AnswerCut(30, 61, 61)
  probs = np.asarray(scorer(groups))
  for b, grp in enumerate(groups):
    want = _reference_probs(clf, tok, grp, 30, 61, symmetric)
    np.testing.assert_allclose(probs[b], want, atol=TOL)
  if not symmetric:  # one row per model-scored unordered pair
    rows = scorer.rows(groups)
    assert rows.num_real == (10 - 1) + 10  # group 0 has one short-rule pair, group 1 none


def test_token_cut_and_run_overrides():
  clf = tiny.classifier(PairMode.CROSS, answer_max_words=30)
  tok = tiny.tokenizer()
  over = PairScorer(clf, tok, SHAPES, answer_max_tokens=10, length_source="diversity")
  assert over.cut == answer_length.AnswerCut(None, 10, None)  # replaces the folder's words cut
  rows = over.rows([[tiny.text(np.random.default_rng(2), 25)] * 2])
  assert rows.attention_mask_PxL.sum(1).max() == 2 * 10 + 3
  with pytest.raises(InputError, match="diversity.answer_max_words"):
    PairScorer(clf, tok, SHAPES, answer_max_words=31, length_source="diversity")
  with pytest.raises(InputError, match="classifier.answer_max_tokens"):
    PairScorer(tiny.classifier(PairMode.CROSS, answer_max_tokens=31), tok, SHAPES)
