"""Saving and loading a trained equivalence classifier.

A classifier folder holds:
  classifier.json   the ClassifierConfig (mode, threshold, truncation, ...), the recipe, the split
                    and the validation metrics of the run that produced it;
  checkpoint/       Orbax checkpoint of every array of the PairClassifier (encoder, head, idf);
  hf/               HF-format export of the encoder (config.json, model.safetensors, tokenizer
                    files): a BertForSequenceClassification in cross mode, a BertModel plus
                    `pair_head.safetensors` (head weights and idf) in bi mode.
`load_classifier` restores from checkpoint/ (exact) using hf/ for the encoder config and tokenizer.

A plain HF `*ForSequenceClassification` folder (BERT, ModernBERT, DeBERTa-v2/v3, Qwen3, Qwen2,
Llama; config.json + safetensors + tokenizer.json, no classifier.json) is a classifier too: a
cross-encoder whose 2-way head's `similar_label` output (default 1, as NoveltyBench's
deberta-v3-large-generation-similarity reads softmax[:, 1]) is P(similar), threshold 0.5 unless
the caller gives one. Its per-answer cut is the default (answer_length.py) unless overridden.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx

from darling_jax.diversity.classifier import ClassifierConfig, PairClassifier, PairMode
from darling_jax.errors import InputError
from darling_jax.models import encoders
from darling_jax.models.safetensors_io import save_safetensors

META_NAME = "classifier.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "spm.model", "tokenizer.model")


def save_classifier(clf: PairClassifier, tokenizer_folder: str | os.PathLike,
                    out: str | os.PathLike, meta: dict[str, Any]) -> pathlib.Path:
  """Writes classifier.json, checkpoint/ and hf/ into `out` (created if needed)."""
  import orbax.checkpoint as ocp

  out = pathlib.Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  fam = encoders.family(clf.config.model_type)
  hf = out / "hf"
  fam.export(clf.encoder, hf)
  for name in TOKENIZER_FILES:
    src = pathlib.Path(tokenizer_folder) / name
    if src.exists():
      shutil.copyfile(src, hf / name)
  if clf.config.mode == PairMode.BI:
    head = {"/".join(map(str, k)): np.asarray(jax.device_get(v.get_value()))
            for k, v in nnx.to_flat_state(nnx.state(clf.head))}
    save_safetensors(head, hf / "pair_head")
    os.replace(hf / "pair_head" / "model.safetensors", hf / "pair_head.safetensors")
    (hf / "pair_head").rmdir()
  state = nnx.to_pure_dict(nnx.state(clf))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(out / "checkpoint", state, force=True)
    ckpt.wait_until_finished()
  (out / META_NAME).write_text(json.dumps({"classifier": clf.config.to_json(), **meta}, indent=2))
  return out


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(folder) / META_NAME
  try:
    meta = json.loads(path.read_text())
  except FileNotFoundError:
    raise InputError(path, "not found: not a classifier folder (train one with "
                     "`darling-jax classifier train`)") from None
  except json.JSONDecodeError as e:
    raise InputError(path, f"not valid JSON ({e})") from None
  if not isinstance(meta, dict) or "classifier" not in meta:
    raise InputError(path, "has no 'classifier' section")
  return meta


def is_hf_classifier_folder(folder: str | os.PathLike) -> bool:
  """A HF model folder (config.json) that is not a `classifier train` output (classifier.json)."""
  folder = pathlib.Path(folder)
  return not (folder / META_NAME).exists() and (folder / "config.json").exists()


def read_threshold(folder: str | os.PathLike) -> float | None:
  """The calibrated tau saved in a classifier folder (None for a plain HF folder), read without
  loading any weights."""
  if is_hf_classifier_folder(folder):
    return None
  meta = read_meta(folder)
  where = str(pathlib.Path(folder) / META_NAME)
  return ClassifierConfig.from_json(meta["classifier"], where).threshold


def load_hf_classifier(folder: str | os.PathLike, *, similar_label: int = 1,
                       threshold: float = 0.5, mesh=None
                       ) -> tuple[PairClassifier, Any, dict[str, Any]]:
  """(cross-encoder classifier, tokenizer, meta) straight from a HF *ForSequenceClassification
  folder (see the module docstring). mesh: where to place the weights (sharded families: a
  `sharded_scoring_mesh()`; default: the first device).

  Raises:
    InputError: an unsupported model_type, a folder without a head or with a head that is not
      2-way, or (decoders) without the pad/EOS ids the pair rows need; each naming the folder.
  """
  folder = pathlib.Path(folder).resolve()
  hf = encoders.read_hf_config(folder)
  model_type = hf.get("model_type")
  if model_type is None:
    raise InputError(folder / "config.json", "has no model_type field")
  fam = encoders.family(model_type)
  config = ClassifierConfig(mode=PairMode.CROSS, model_type=model_type, threshold=threshold,
                            similar_label=similar_label)
  tokenizer = encoders.tokenizer_from_folder(folder, model_type)  # its errors before any weights
  model = fam.load(folder, mesh=mesh, rules=_rules(fam))
  if model.config.num_labels != 2:
    got = "no classification head" if not model.config.num_labels else (
        f"a {model.config.num_labels}-way head")
    raise InputError(folder, f"has {got}; a pair classifier needs a 2-way "
                     "*ForSequenceClassification head (num_labels=2)")
  clf = PairClassifier(model, config, rngs=nnx.Rngs(0))
  return clf, tokenizer, {"classifier": config.to_json(), "source": "hf_folder"}


def _rules(fam):
  from darling_jax.sharding.rules import CLASSIFIER_RULES

  return getattr(fam, "DEFAULT_LOAD_RULES", CLASSIFIER_RULES)


def load_classifier(folder: str | os.PathLike, *, mesh=None, similar_label: int | None = None
                    ) -> tuple[PairClassifier, encoders.EncoderTokenizer, dict[str, Any]]:
  """(classifier, tokenizer, classifier.json contents) from a folder written by save_classifier,
  or from a plain HF *ForSequenceClassification folder (load_hf_classifier).

  mesh: place the weights there (a sharded family by its rules; default: the first device).
  similar_label: override which head output is "similar" (None: the folder's, else 1).
  """
  import orbax.checkpoint as ocp

  folder = pathlib.Path(folder).resolve()
  if is_hf_classifier_folder(folder):
    return load_hf_classifier(folder, similar_label=1 if similar_label is None else similar_label,
                              mesh=mesh)
  meta = read_meta(folder)
  config = ClassifierConfig.from_json(meta["classifier"], str(folder / META_NAME))
  if similar_label is not None:
    config = dataclasses.replace(config, similar_label=similar_label)
  fam = encoders.family(config.model_type)
  hf = folder / "hf"
  enc_config = fam.Config.from_hf(encoders.read_hf_config(hf))
  tokenizer = encoders.tokenizer_from_folder(hf, config.model_type)

  def build() -> PairClassifier:
    enc = fam.Model(enc_config, rngs=nnx.Rngs(0))
    return PairClassifier(enc, config, rngs=nnx.Rngs(0))

  abstract = nnx.eval_shape(build)
  graphdef, state = nnx.split(abstract)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.to_pure_dict(state))
  if mesh is not None:  # restore each array straight into its sharding (a 4B decoder: FSDP)
    from darling_jax.sharding.rules import state_shardings

    shardings = nnx.to_pure_dict(state_shardings(state, mesh, _rules(fam)))
    target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          target, shardings)
  ckpt_dir = folder / "checkpoint"
  if not ckpt_dir.exists():
    raise InputError(ckpt_dir, "missing: the classifier folder has no checkpoint")
  try:
    with ocp.StandardCheckpointer() as ckpt:
      restored = ckpt.restore(ckpt_dir, target)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise InputError(ckpt_dir, f"does not match the classifier config ({e})") from None
  nnx.replace_by_pure_dict(state, restored)
  clf = nnx.merge(graphdef, state)
  return clf, tokenizer, meta
