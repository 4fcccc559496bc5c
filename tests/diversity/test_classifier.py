"""Tests `darling_jax/diversity/classifier*.py`: metrics, training, save/load, recipes."""

import importlib.util
import itertools
import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from darling_jax.diversity import classifier_eval, classifier_train
from darling_jax.diversity.classifier import ClassifierConfig, PairMode
from darling_jax.diversity.classifier_io import load_classifier, save_classifier
from darling_jax.diversity.classifier_recipes import RECIPES, Recipe, Trainable, get_recipe
from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes
from darling_jax.errors import InputError

_spec = importlib.util.spec_from_file_location(
    "diversity_tiny_classifier", pathlib.Path(__file__).with_name("tiny_classifier.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

SHAPES = ScoringShapes(micro_batch=8, min_rows=8, min_length=8)


def test_auc_equals_brute_force_pairwise():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 40))
    scores = rng.integers(0, 6, size=n) / 5.0  # many ties
    labels = rng.integers(0, 2, size=n)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
      assert np.isnan(classifier_eval.roc_auc(scores, labels))
      continue
    brute = np.mean([1.0 if p > q else 0.5 if p == q else 0.0
                     for p, q in itertools.product(pos, neg)])
    assert classifier_eval.roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)


def test_best_threshold_is_the_best_over_all_cuts():
  rng = np.random.default_rng(1)
  scores, labels = rng.random(50), rng.integers(0, 2, 50)
  tau, acc = classifier_eval.best_threshold(scores, labels)
  brute = max(np.mean((scores > t) == labels) for t in np.r_[-1.0, scores])
  assert acc == pytest.approx(brute) == classifier_eval.accuracy(scores, labels, tau)
  report = classifier_eval.summarize(scores, labels, 0.5)
  assert {"accuracy", "auc", "threshold"} <= set(report)
  assert report["accuracy"] == classifier_eval.accuracy(scores, labels, 0.5)
  assert report["threshold"] == tau


def test_read_pairs_errors(tmp_path):
  f = tmp_path / "p.jsonl"
  f.write_text('{"generation_0": "a", "generation_1": "b", "similar": 1}\n{"generation_0": "a"}\n')
  with pytest.raises(InputError, match="p.jsonl:2.*generation_1"):
    classifier_eval.read_pairs(f)
  f.write_text('{"generation_0": "a", "generation_1": "b", "similar": 2}\n')
  with pytest.raises(InputError, match="0/1"):
    classifier_eval.read_pairs(f)
  f.write_text("not json\n")
  with pytest.raises(InputError, match="not valid JSON"):
    classifier_eval.read_pairs(f)
  with pytest.raises(InputError, match="not found"):
    classifier_eval.read_pairs(tmp_path / "missing.jsonl")


def test_stratified_split_and_class_weights():
  labels = np.array([0] * 67 + [1] * 33)
  tr, va = classifier_train.stratified_split(labels, 0.2, seed=0)
  assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
  assert labels[va].sum() == round(0.2 * 33) and (labels[va] == 0).sum() == round(0.2 * 67)
  np.testing.assert_array_equal(va, classifier_train.stratified_split(labels, 0.2, seed=0)[1])
  np.testing.assert_allclose(classifier_train.class_weights(labels), [100 / 67, 100 / 33])


def _pairs(n=24, seed=0):
  """Similar pairs share most words; dissimilar ones do not."""
  rng = np.random.default_rng(seed)
  out = []
  for k in range(n):
    a = tiny.text(rng, 12)
    similar = k % 3 == 0
    b = " ".join(a.split()[:10]) + " " + tiny.text(rng, 2) if similar else tiny.text(rng, 12)
    out.append({"generation_0": a, "generation_1": b, "similar": int(similar)})
  return out


def _recipe(base: str, **kw) -> Recipe:
  import dataclasses
  return dataclasses.replace(get_recipe(base), **kw)


def test_head_training_loss_decreases_and_learns_overlap():
  clf = tiny.classifier(PairMode.BI, max_tokens=8, bag_tokens=16)
  tok = tiny.tokenizer()
  pairs = _pairs()
  a, b = [p["generation_0"] for p in pairs], [p["generation_1"] for p in pairs]
  y = np.array([p["similar"] for p in pairs])
  classifier_train.fit_idf(clf, tok, a + b)
  phi = classifier_train._pair_features(PairScorer(clf, tok, SHAPES), a, b)
  r = _recipe("default", steps=1, warmup_steps=0)
  first = classifier_train.train_head(nnx.clone(clf.head), phi, y, r)  # loss at init
  r = _recipe("default", steps=200)
  last = classifier_train.train_head(clf.head, phi, y, r)
  assert last < first - 0.1
  probs = classifier_train._head_probs(clf.head, phi)
  assert classifier_eval.roc_auc(probs, y) > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["full", "bi_full"])
def test_full_training_loss_decreases(tmp_path, recipe):
  """Every weight trains: the class-weighted loss over all training pairs goes down."""
  folder = tiny.write_encoder_folder(tmp_path / "enc")
  r = _recipe(recipe, steps=10, warmup_steps=2, batch_size=8, peak_lr=1e-3, final_lr=1e-3,
              max_tokens=12)
  clf, tok, _ = classifier_train.init_classifier(folder, r)
  pairs = _pairs(16)
  a, b = [p["generation_0"] for p in pairs], [p["generation_1"] for p in pairs]
  y = np.array([p["similar"] for p in pairs])
  if clf.config.mode == PairMode.BI:
    classifier_train.fit_idf(clf, tok, a + b)
  cw = classifier_train.class_weights(y)

  def loss() -> float:
    p = np.clip(PairScorer(clf, tok, SHAPES).score_pairs(a, b), 1e-7, 1 - 1e-7)
    ce = -np.where(y == 1, np.log(p), np.log(1 - p))
    return float((cw[y] * ce).sum() / cw[y].sum())

  before = loss()
  classifier_train._train_all(clf, tok, a, b, y, r, SHAPES, lambda m: None)
  assert loss() < before - 0.01


@pytest.mark.parametrize("mode", list(PairMode))
def test_save_load_round_trip_identical(tmp_path, mode):
  folder = tiny.write_encoder_folder(tmp_path / "enc")
  clf = tiny.classifier(mode, max_tokens=10, threshold=0.37)
  tok = tiny.tokenizer()
  save_classifier(clf, folder, tmp_path / "clf", {"note": "test"})
  again, tok2, meta = load_classifier(tmp_path / "clf")
  assert again.config == clf.config and meta["note"] == "test"
  groups = [[tiny.text(np.random.default_rng(k), n) for n in (4, 9, 13)] for k in range(2)]
  np.testing.assert_array_equal(np.asarray(PairScorer(clf, tok, SHAPES)(groups)),
                                np.asarray(PairScorer(again, tok2, SHAPES)(groups)))
  assert (tmp_path / "clf" / "hf" / "model.safetensors").exists()
  hf_config = json.loads((tmp_path / "clf" / "hf" / "config.json").read_text())
  want = "BertForSequenceClassification" if mode == PairMode.CROSS else "BertModel"
  assert hf_config["architectures"] == [want]


def test_load_errors(tmp_path):
  with pytest.raises(InputError, match="classifier.json"):
    load_classifier(tmp_path)
  (tmp_path / "classifier.json").write_text(json.dumps({"classifier": {"mode": "tri"}}))
  with pytest.raises(InputError, match="mode must be one of"):
    load_classifier(tmp_path)


def test_recipes_and_config_validation():
  assert RECIPES["default"].trainable == Trainable.HEAD and RECIPES["full"].mode == PairMode.CROSS
  for r in RECIPES.values():  # every preset builds and serialises
    json.dumps(r.to_json())
  with pytest.raises(InputError, match="unknown recipe"):
    get_recipe("nope")
  with pytest.raises(InputError, match="bi mode"):
    _recipe("full", trainable=Trainable.HEAD)
  with pytest.raises(InputError, match="threshold"):
    ClassifierConfig(threshold=1.5)
  with pytest.raises(InputError, match="windows"):
    ClassifierConfig(mode=PairMode.CROSS, windows=2)
