"""Tests `darling_jax/models/reward_model.py` against transformers' *ForSequenceClassification."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.models.reward_model import (
    HeadLayout, Pooling, export_reward_model, load_reward_model)
from darling_jax.models.safetensors_io import SafetensorsFolder, save_safetensors
from testing_support.variant_cache import cached_by_variant

pytestmark = pytest.mark.torch

TOL = 1e-4  # float32 scores, max abs difference
PAD = 0
BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
VARIANTS = {
    "llama": ("LlamaConfig", dict(num_labels=1, attention_bias=True)),
    "qwen2": ("Qwen2Config", dict(num_labels=1)),
    "qwen3_2labels": ("Qwen3Config", dict(num_labels=2, head_dim=16)),
}


def _write(folder: pathlib.Path, variant: str) -> pathlib.Path:
  import torch
  import transformers

  cls_name, kwargs = VARIANTS[variant]
  config = getattr(transformers, cls_name)(**{**BASE, **kwargs})
  torch.manual_seed(0)
  model = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
  with torch.no_grad():  # non-trivial norms/biases, and a head far from 0 (scores of O(1))
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.score.weight.mul_(20.0)
  model.save_pretrained(folder, safe_serialization=True)
  return folder


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
  return cached_by_variant(tmp_path_factory, _write)


def _batch(side: str, seed: int = 0):
  """4 rows of 9, 5, 1 and 6 real tokens; row 3's real tokens end in the pad id (HF skips them)."""
  rng = np.random.default_rng(seed)
  lengths = [9, 5, 1, 6]
  T = max(lengths)
  ids = np.full((4, T), PAD, np.int32)
  mask = np.zeros((4, T), np.int32)
  for b, n in enumerate(lengths):
    row = rng.integers(3, BASE["vocab_size"], n)
    if b == 3:
      row[-2:] = PAD
    span = slice(T - n, T) if side == "left" else slice(0, n)
    ids[b, span], mask[b, span] = row, 1
  return ids, mask


def _hf_scores(folder, ids, mask):
  import torch
  import transformers

  model = transformers.AutoModelForSequenceClassification.from_pretrained(folder,
                                                                          dtype=torch.float32)
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_scores_match_transformers_left_and_right_padded(rm_dir, variant):
  folder = rm_dir(variant)
  model = load_reward_model(folder)
  assert model.config.num_labels == VARIANTS[variant][1]["num_labels"]
  for side in ("left", "right"):
    ids, mask = _batch(side)
    ours = np.asarray(model(ids, attention_mask=mask))
    ref = _hf_scores(folder, ids, mask)
    assert ours.shape == ref.shape == (4, model.config.num_labels)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0, err_msg=side)
    assert np.abs(ref).max() > 0.05  # a head near zero would make the check vacuous


def test_padding_side_does_not_change_scores(rm_dir):
  model = load_reward_model(rm_dir("llama"))
  left = np.asarray(model(*_batch("left")))
  right = np.asarray(model(*_batch("right")))
  np.testing.assert_allclose(left, right, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["llama", "qwen3_2labels"])
def test_export_reloads_in_transformers_identically(rm_dir, tmp_path, variant):
  model = load_reward_model(rm_dir(variant))
  export_reward_model(model, tmp_path / "export")
  cfg = json.loads((tmp_path / "export" / "config.json").read_text())
  assert cfg["architectures"][0].endswith("ForSequenceClassification")
  assert cfg["pad_token_id"] == PAD and len(cfg["id2label"]) == model.config.num_labels
  ids, mask = _batch("right", seed=1)
  ours = np.asarray(model(ids, attention_mask=mask))
  np.testing.assert_allclose(_hf_scores(tmp_path / "export", ids, mask), ours, atol=TOL, rtol=0)
  again = load_reward_model(tmp_path / "export")
  np.testing.assert_array_equal(np.asarray(again(ids, attention_mask=mask)), ours)


# ---- Athene-style head: v_head.weight read at the last CLS token ---------------------------------

CLS = 95


def _athene_folder(rm_dir, tmp_path) -> pathlib.Path:
  folder = shutil.copytree(rm_dir("llama"), tmp_path / "athene")
  tensors = {k: np.array(v) for k, v in SafetensorsFolder(folder).items()}
  tensors["v_head.weight"] = tensors.pop("score.weight")
  save_safetensors(tensors, folder)
  return folder


def test_athene_head_reads_last_cls_token(rm_dir, tmp_path):
  import torch
  import transformers

  folder = _athene_folder(rm_dir, tmp_path)
  with pytest.raises(InputError, match="cls_token"):
    load_reward_model(folder)  # no tokenizer to name the CLS token, none given
  model = load_reward_model(folder, cls_token_id=CLS)
  assert model.config.head is HeadLayout.V_HEAD and model.config.pooling is Pooling.LAST_CLS
  ids, mask = _batch("right", seed=2)
  ids[0, 3], ids[0, 7] = CLS, CLS  # two CLS: the last one is read
  ids[1, 4] = CLS  # the row's last real token
  ours = np.asarray(model(ids, attention_mask=mask))[:, 0]
  # Reference: Athene's published forward, v_head(last hidden)[last CLS index]; rows without a
  # CLS (where its code fails) are read at the last attended token.
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(rm_dir("llama"),
                                                                       dtype=torch.float32)
  with torch.no_grad():
    hidden = hf.model(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state
    rewards = hf.score(hidden)[..., 0].numpy()
  idx = [7, 4, 0, 5]
  np.testing.assert_allclose(ours, rewards[np.arange(4), idx], atol=TOL, rtol=0)
  export_reward_model(model, tmp_path / "export")
  assert "v_head.weight" in SafetensorsFolder(tmp_path / "export")
  again = load_reward_model(tmp_path / "export", cls_token_id=CLS)
  np.testing.assert_array_equal(np.asarray(again(ids, attention_mask=mask))[:, 0], ours)


# ---- bad input -----------------------------------------------------------------------------------

def _rewrite(folder: pathlib.Path, drop: str | None = None, add: dict | None = None) -> None:
  tensors = {k: np.array(v) for k, v in SafetensorsFolder(folder).items() if k != drop}
  save_safetensors({**tensors, **(add or {})}, folder)


def test_missing_score_weight(rm_dir, tmp_path):
  folder = shutil.copytree(rm_dir("qwen2"), tmp_path / "m")
  _rewrite(folder, drop="score.weight")
  with pytest.raises(InputError, match="no score.weight"):
    load_reward_model(folder)


def test_num_labels_disagrees_with_score_shape(rm_dir, tmp_path):
  folder = shutil.copytree(rm_dir("qwen2"), tmp_path / "m")
  cfg = json.loads((folder / "config.json").read_text())
  cfg["id2label"] = {"0": "bad", "1": "good", "2": "great"}
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(InputError, match=r"'score.weight' has shape \(1, 32\).*\(3, 32\)"):
    load_reward_model(folder)


def test_head_with_bias_is_refused(rm_dir, tmp_path):
  folder = shutil.copytree(rm_dir("qwen2"), tmp_path / "m")
  _rewrite(folder, add={"score.bias": np.zeros((1,), np.float32)})
  with pytest.raises(InputError, match="score.bias"):
    load_reward_model(folder)


def test_not_a_model_folder(tmp_path):
  with pytest.raises(InputError, match="config.json"):
    load_reward_model(tmp_path)
