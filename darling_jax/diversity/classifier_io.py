"""Saving and loading a trained equivalence classifier.

A classifier folder holds:
  classifier.json   the ClassifierConfig (mode, threshold, truncation, ...), the recipe, the split
                    and the validation metrics of the run that produced it;
  checkpoint/       Orbax checkpoint of every array of the PairClassifier (encoder, head, idf);
  hf/               HF-format export of the encoder (config.json, model.safetensors, tokenizer
                    files): a BertForSequenceClassification in cross mode, a BertModel plus
                    `pair_head.safetensors` (head weights and idf) in bi mode.
`load_classifier` restores from checkpoint/ (exact) using hf/ for the encoder config and tokenizer.
"""

from __future__ import annotations

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


def load_classifier(folder: str | os.PathLike
                    ) -> tuple[PairClassifier, encoders.EncoderTokenizer, dict[str, Any]]:
  """(classifier, tokenizer, classifier.json contents) from a folder written by save_classifier."""
  import orbax.checkpoint as ocp

  folder = pathlib.Path(folder).resolve()
  meta = read_meta(folder)
  config = ClassifierConfig.from_json(meta["classifier"], str(folder / META_NAME))
  fam = encoders.family(config.model_type)
  hf = folder / "hf"
  enc_config = fam.Config.from_hf(encoders.read_hf_config(hf))

  def build() -> PairClassifier:
    enc = fam.Model(enc_config, rngs=nnx.Rngs(0))
    return PairClassifier(enc, config, rngs=nnx.Rngs(0))

  abstract = nnx.eval_shape(build)
  graphdef, state = nnx.split(abstract)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.to_pure_dict(state))
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
  tokenizer = encoders.EncoderTokenizer.from_folder(hf, config.model_type)
  return clf, tokenizer, meta
