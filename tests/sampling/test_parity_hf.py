"""Greedy rollouts vs transformers' `generate(do_sample=False)` on random Llama / Qwen2 / Qwen3
checkpoints written by transformers itself and read back with `load_model`."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from darling_jax.models.loading import load_model
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.sampler import sample_model

_spec = importlib.util.spec_from_file_location(
    "sampling_tiny_checkpoints", pathlib.Path(__file__).with_name("tiny_checkpoints.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

NEW = 32
PROMPTS = [[1, 9, 14], [1, 30, 4, 7, 7, 60, 3, 12, 22, 5], [1, 12, 40, 41, 43, 8]]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_continuation_matches_transformers(family, tmp_path):
  import torch
  import transformers

  folder = tiny.hf_tiny_checkpoint(tmp_path / family, family)
  P = max(map(len, PROMPTS))
  ids = np.full((len(PROMPTS), P), tiny.PAD, np.int64)
  mask = np.zeros((len(PROMPTS), P), np.int64)
  for i, p in enumerate(PROMPTS):
    ids[i, P - len(p):], mask[i, P - len(p):] = p, 1

  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                       max_new_tokens=NEW, pad_token_id=tiny.PAD, eos_token_id=tiny.EOS)
  want = want[:, P:].numpy()

  model, tokenizer = load_model(folder)
  assert tokenizer.eos_token_ids == (tiny.EOS,)
  cfg = SamplerConfig(max_new_tokens=NEW, greedy=True, stop_ids=(tiny.EOS,), cache_dtype="float32")
  out = sample_model(model, ids.astype(np.int32), mask.astype(bool), jax.random.key(0), cfg,
                     pad_id=tiny.PAD)
  got = np.asarray(out.tokens)[:, 0]
  # transformers stops the whole batch once every row has emitted EOS; we keep a fixed width.
  np.testing.assert_array_equal(got[:, :want.shape[1]], want)
  assert (got[:, want.shape[1]:] == tiny.PAD).all()
  assert want.shape[1] >= 8  # a real continuation was compared
