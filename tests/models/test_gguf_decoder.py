"""Tests `darling_jax/models/gguf_decoder.py` on GGUF files written like llama.cpp writes them."""

import jax.numpy as jnp
import numpy as np
import pytest
from testing_support.gguf_writer import byte_level_vocab, write_gguf_from_hf

from darling_jax.errors import InputError
from darling_jax.models.decoder import positions_from_mask
from darling_jax.models.loading import load_model

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
  import torch
  import transformers

  vocab = len(byte_level_vocab()[0])
  cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                 max_position_embeddings=512)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
  folder = tmp_path_factory.mktemp("hf_llama")
  model.save_pretrained(folder)
  return folder, model


def _hf_logits(model, ids, mask):
  import torch

  pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()


def _batch(vocab):
  rng = np.random.default_rng(0)
  ids = rng.integers(3, vocab, (2, 9)).astype(np.int64)
  mask = np.ones((2, 9), np.int64)
  mask[1, :4] = 0
  return ids, mask


def test_f32_gguf_matches_transformers(hf_llama, tmp_path):
  folder, hf = hf_llama
  path = write_gguf_from_hf(folder, tmp_path / "m.gguf", "F32")
  model, tok = load_model(path)
  assert model.config.tie_word_embeddings and model.config.num_kv_heads == 2
  ids, mask = _batch(model.config.vocab_size)
  ours = np.asarray(model(ids, attention_mask=mask))
  valid = mask.astype(bool)
  # q/k rows were permuted by the writer exactly as llama.cpp does; un-permuting must be exact.
  np.testing.assert_allclose(ours[valid], _hf_logits(hf, ids, mask)[valid], atol=1e-4, rtol=0)


def test_q8_gguf_is_close_to_transformers(hf_llama, tmp_path):
  folder, hf = hf_llama
  model, _ = load_model(write_gguf_from_hf(folder, tmp_path / "q8.gguf", "Q8_0"))
  ids, mask = _batch(model.config.vocab_size)
  ours = np.asarray(model(ids, attention_mask=mask))
  ref = _hf_logits(hf, ids, mask)
  valid = mask.astype(bool)
  # 8-bit blocks: relative weight error ~0.4%, so logits agree to ~1e-2 but not bit for bit.
  err = np.abs(ours[valid] - ref[valid]).max()
  assert 0 < err < 2e-2


def test_gguf_tokenizer_and_template(hf_llama, tmp_path):
  folder, _ = hf_llama
  _, tok = load_model(write_gguf_from_hf(folder, tmp_path / "m.gguf", "F32"))
  text = "in the cat 2024"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  # merges apply ("Ġthe" is one token) and digits are split one by one (the smollm pre-tokenizer)
  assert tok.token_to_id("Ġthe") in ids
  assert len([i for i in ids if tok.decode([i]).strip().isdigit()]) == 4
  prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  pids = tok.encode(prompt)
  assert pids[0] == tok.token_to_id("<|im_start|>") == 1  # specials are atomic
  assert tok.eos_token_ids == (2,)


def test_bad_gguf_files(hf_llama, tmp_path):
  with pytest.raises(InputError, match="file not found"):
    load_model(tmp_path / "missing.gguf")
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
  with pytest.raises(InputError, match="bad.gguf.*not a readable GGUF"):
    load_model(bad)
  folder, _ = hf_llama
  with pytest.raises(InputError, match="unknown GGUF architecture 'mamba'"):
    load_model(write_gguf_from_hf(folder, tmp_path / "mamba.gguf", "F32", arch="mamba"))


@pytest.mark.slow
def test_real_smollm2_gguf_config_and_tokenizer():
  from darling_jax.models.decoder_config import DecoderConfig
  from darling_jax.models.gguf_decoder import _open, gguf_config, gguf_tokenizer
  from darling_jax.models.loading import packaged_smollm2_gguf

  path = packaged_smollm2_gguf()
  reader = _open(path)
  cfg = gguf_config(reader, path)
  assert cfg == DecoderConfig.smollm2_135m().__class__(**{
      **DecoderConfig.smollm2_135m().__dict__, "max_position_embeddings": 8192})
  tok = gguf_tokenizer(reader, path)
  for text in ["The capital of France is Paris.", "x = 3.14159 * r**2", "naïve café — 東京 🙂",
               "  leading spaces\n\ttabs"]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("<|im_start|>user") [0] == 1
