"""Hermetic tiny encoder + tokenizer for classifier tests (no network, no torch).

Loaded by the tests with importlib (tests/ has no packages): a WordLevel tokenizer over the words
"w0".."w89" and a random 2-layer BERT (`bert.Config.tiny()`), written as a HF folder.
"""

import json
import pathlib

import jax
import numpy as np
from flax import nnx

from darling_jax.diversity.classifier import ClassifierConfig, PairClassifier, PairMode
from darling_jax.models.encoders import EncoderTokenizer, bert

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = [f"w{i}" for i in range(90)]


def hf_tokenizer():
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers

  vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


def tokenizer() -> EncoderTokenizer:
  return EncoderTokenizer(hf_tokenizer(), cls_id=2, sep_id=3, pad_id=0, uses_token_type_ids=True)


def encoder(seed: int = 0, num_labels: int | None = None) -> bert.Model:
  """A tiny BERT whose weights are large enough that different inputs score differently."""
  model = bert.Model(bert.Config.tiny(num_labels=num_labels), rngs=nnx.Rngs(seed))
  key = jax.random.PRNGKey(seed + 100)
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  leaves = [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


def write_encoder_folder(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
  bert.export(encoder(seed), folder)
  hf_tokenizer().save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"}))
  return folder


def classifier(mode: PairMode, seed: int = 0, **config) -> PairClassifier:
  enc = encoder(seed, num_labels=2 if mode == PairMode.CROSS else None)
  clf = PairClassifier(enc, ClassifierConfig(mode=mode, **config), rngs=nnx.Rngs(seed))
  if mode == PairMode.BI:  # a non-trivial idf table and head
    rng = np.random.default_rng(seed)
    clf.head.idf_V.set_value(np.asarray(rng.uniform(0.5, 3.0, 99), np.float32))
    clf.head.w2_ExC.set_value(np.asarray(rng.normal(0, 2.0, clf.head.w2_ExC.get_value().shape),
                                         np.float32))
  return clf


def text(rng: np.random.Generator, n_words: int) -> str:
  return " ".join(rng.choice(WORDS, size=n_words))
