"""Tests `darling_jax/models/encoders/decoder_classifier.py`: Qwen3 / Llama
*ForSequenceClassification (num_labels=2) folders written by transformers, as pair classifiers."""

import json
import pathlib

import numpy as np
import pytest

from darling_jax.diversity.classifier_io import load_classifier, load_hf_classifier
from darling_jax.diversity.pair_scoring import PairScorer, ScoringShapes, sharded_scoring_mesh
from darling_jax.errors import InputError
from testing_support.variant_cache import cached_by_variant

pytestmark = pytest.mark.torch

TOL = 1e-5  # probabilities, float32
PAD, EOS, SEP = 0, 2, 3
WORDS = [f"w{i}" for i in range(60)]
SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>"]
BASE = dict(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=EOS,
            pad_token_id=PAD, num_labels=2)
VARIANTS = {"qwen3": ("Qwen3Config", dict(head_dim=16)),
            "llama": ("LlamaConfig", dict(attention_bias=True))}
SHAPES = ScoringShapes(micro_batch=8, min_rows=8, min_length=8)


def _write_tokenizer(folder: pathlib.Path, sep: bool = True) -> None:
  import tokenizers
  from tokenizers import models, pre_tokenizers

  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / "tokenizer.json"))
  cfg = {"eos_token": "<eos>", "pad_token": "<pad>", **({"sep_token": "<sep>"} if sep else {})}
  (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def _write(folder: pathlib.Path, variant: str) -> pathlib.Path:
  import torch
  import transformers

  cls_name, kwargs = VARIANTS[variant]
  config = getattr(transformers, cls_name)(**{**BASE, **kwargs})
  torch.manual_seed(0)
  model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
  with torch.no_grad():  # non-trivial norms/biases, a head far from 0 (probabilities not ~0.5)
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.score.weight.mul_(20.0)
  model.save_pretrained(folder, safe_serialization=True)
  _write_tokenizer(folder)
  return folder


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
  return cached_by_variant(tmp_path_factory, _write)


def _text(rng, n):
  return " ".join(rng.choice(WORDS, size=n))


def _hf_probs(folder, rows):
  """transformers on each `a <sep> b <eos>` row alone (no padding): softmax[:, 1]."""
  import torch
  import transformers

  model = transformers.AutoModelForSequenceClassification.from_pretrained(folder,
                                                                          dtype=torch.float32)
  out = []
  with torch.no_grad():
    for r in rows:
      logits = model(input_ids=torch.tensor([r], dtype=torch.long)).logits
      out.append(float(torch.softmax(logits, -1)[0, 1]))
  return np.asarray(out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pair_probabilities_match_transformers(clf_dir, variant):
  folder = clf_dir(variant)
  clf, tok, meta = load_classifier(folder)  # a plain HF folder: no classifier.json
  assert meta["source"] == "hf_folder" and clf.config.model_type == variant
  assert (tok.sep_id, tok.eos_id, tok.pad_id) == (SEP, EOS, PAD)
  rng = np.random.default_rng(0)
  groups = [[_text(rng, n) for n in (7, 12, 3 + 6 * b, 9)] for b in range(2)]
  probs = np.asarray(PairScorer(clf, tok, SHAPES)(groups))  # bucketed, right-padded rows
  rows, where = [], []
  for b, grp in enumerate(groups):
    ids = tok.encode(grp, 1000)
    for i in range(4):
      for j in range(i + 1, 4):
        rows.append(ids[i] + [SEP] + ids[j] + [EOS])
        where.append((b, i, j))
  want = _hf_probs(folder, rows)
  got = np.asarray([probs[b, i, j] for b, i, j in where])
  np.testing.assert_allclose(got, want, atol=TOL)
  assert np.ptp(want) > 5e-3  # the pairs really score differently (random tiny weights)
  np.testing.assert_array_equal(probs, probs.transpose(0, 2, 1))


def test_sharded_weights_score_like_one_device(clf_dir):
  folder = clf_dir("qwen3")
  mesh = sharded_scoring_mesh()
  assert mesh.shape["fsdp"] == 8  # tests/conftest.py forces 8 host devices
  clf, tok, _ = load_classifier(folder, mesh=mesh)
  scorer = PairScorer(clf, tok, SHAPES, mesh=mesh)
  embed = scorer.state["encoder"]["body"]["embed"]
  assert not embed.get_value().sharding.is_fully_replicated  # FSDP, not replicated
  one = PairScorer(*load_classifier(folder)[:2], SHAPES)
  rng = np.random.default_rng(1)
  groups = [[_text(rng, n) for n in (5, 11, 8)] for _ in range(3)]
  np.testing.assert_allclose(np.asarray(scorer(groups)), np.asarray(one(groups)), atol=TOL)


@pytest.mark.slow
def test_train_init_and_eval_cli_on_hf_folder(clf_dir, tmp_path, capsys):
  from darling_jax.cli import main as cli

  folder = clf_dir("llama")
  rng = np.random.default_rng(2)
  pairs = tmp_path / "pairs.jsonl"
  with open(pairs, "w") as f:
    for k in range(12):
      a = _text(rng, 8)
      b = a if k % 3 == 0 else _text(rng, 8)
      f.write(json.dumps({"generation_0": a, "generation_1": b, "similar": int(k % 3 == 0)}) + "\n")
  preds = tmp_path / "preds.jsonl"
  rc = cli.main(["classifier", "eval", "--checkpoint", str(folder), "--pairs", str(pairs),
                 "--threshold", "0.3", "--predictions", str(preds), "--micro-batch", "8"])
  assert rc == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["configured_threshold"] == 0.3 and result["similar_label"] == 1
  rows = [json.loads(line) for line in preds.read_text().splitlines()]
  assert len(rows) == 12 and all(0.0 <= r["p_similar"] <= 1.0 for r in rows)
  out = tmp_path / "trained"
  rc = cli.main(["classifier", "train", "--pairs", str(pairs), "--out", str(out), "--init",
                 str(folder), "--recipe", "full", "--steps", "2", "--micro-batch", "8",
                 "--threshold", "0.25"])
  assert rc == 0
  capsys.readouterr()
  meta = json.loads((out / "classifier.json").read_text())
  assert meta["classifier"]["threshold"] == 0.25 and meta["classifier"]["model_type"] == "llama"
  again, tok, _ = load_classifier(out)
  assert again.config.threshold == 0.25
  probs = PairScorer(again, tok, SHAPES).score_pairs(["w1 w2 w3 w4 w5 w6"], ["w7 w8 w9 w1 w2 w3"])
  assert probs.shape == (1,) and 0.0 <= probs[0] <= 1.0
  hf_cfg = json.loads((out / "hf" / "config.json").read_text())
  assert hf_cfg["architectures"] == ["LlamaForSequenceClassification"]


def test_bad_decoder_folders(clf_dir, tmp_path):
  import shutil

  src = clf_dir("qwen3")
  no_pad = shutil.copytree(src, tmp_path / "no_pad")
  cfg = json.loads((no_pad / "config.json").read_text())
  cfg["pad_token_id"] = None
  (no_pad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(InputError, match="no_pad.*pad_token_id"):
    load_hf_classifier(no_pad)
  no_eos = shutil.copytree(src, tmp_path / "no_eos")
  cfg = json.loads((no_eos / "config.json").read_text())
  cfg["eos_token_id"] = None
  (no_eos / "config.json").write_text(json.dumps(cfg))
  (no_eos / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
  with pytest.raises(InputError, match="no_eos.*EOS"):
    load_hf_classifier(no_eos)
  from safetensors.numpy import load_file, save_file

  three = shutil.copytree(src, tmp_path / "three")  # a genuine 3-way head
  cfg = json.loads((three / "config.json").read_text())
  cfg["id2label"] = {"0": "a", "1": "b", "2": "c"}
  cfg["label2id"] = {"a": 0, "b": 1, "c": 2}
  (three / "config.json").write_text(json.dumps(cfg))
  tensors = load_file(three / "model.safetensors")
  tensors["score.weight"] = np.concatenate([tensors["score.weight"]] * 2)[:3]
  save_file(tensors, three / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(InputError, match="three.*3-way head"):
    load_hf_classifier(three)
  # The tiny checkpoint holds 128 positions: 2 * 70 + 2 tokens do not fit.
  clf, tok, _ = load_hf_classifier(src)
  with pytest.raises(InputError, match="diversity.answer_max_tokens"):
    PairScorer(clf, tok, SHAPES, answer_max_tokens=70, length_source="diversity")
  with pytest.raises(InputError, match="threshold"):
    PairScorer(clf, tok, SHAPES, threshold=1.5)
