"""Tests `darling_jax/models/hf_decoder.py` + `decoder.py` against transformers (torch CPU)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testing_support.hf_decoders import VARIANTS

from darling_jax.errors import InputError
from darling_jax.models.decoder import positions_from_mask
from darling_jax.models.hf_decoder import export_hf, load_hf_decoder
from darling_jax.sharding import DEFAULT_RULES, MeshConfig, make_mesh

pytestmark = pytest.mark.torch

TOL = 1e-4  # float32 logits, max abs difference (issue: <= 1e-4)


def _batch(vocab: int, seed: int = 0):
  """Left-padded batch of 3 rows with 11, 6 and 1 real tokens."""
  rng = np.random.default_rng(seed)
  lengths = [11, 6, 1]
  T = max(lengths)
  ids = np.zeros((3, T), np.int32)
  mask = np.zeros((3, T), np.int32)
  for b, n in enumerate(lengths):
    ids[b, T - n:] = rng.integers(3, vocab, n)
    mask[b, T - n:] = 1
  return ids, mask


def _hf_logits(folder, ids, mask):
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  pos = np.asarray(positions_from_mask(jnp.asarray(mask)))
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(pos, dtype=torch.long))
  return out.logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_left_padded(tiny_decoder_dir, variant):
  folder = tiny_decoder_dir(variant)
  model = load_hf_decoder(folder)
  ids, mask = _batch(model.config.vocab_size)
  ours = np.asarray(model(ids, attention_mask=mask))
  ref = _hf_logits(folder, ids, mask)
  valid = mask.astype(bool)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["llama_llama3_rope_untied", "qwen2_bias_untied", "qwen3_tied"])
def test_greedy_continuation_matches_transformers(tiny_decoder_dir, variant):
  import torch
  import transformers

  folder = tiny_decoder_dir(variant)
  model = load_hf_decoder(folder)
  ids, mask = _batch(model.config.vocab_size, seed=1)
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                      max_new_tokens=32, min_new_tokens=32, pad_token_id=0).numpy()[:, ids.shape[1]:]
  # Step-by-step argmax of the full forward (the definition of greedy) at one fixed shape: the
  # not-yet-generated tail is masked out, which causal attention cannot see anyway.
  P, new = ids.shape[1], 32
  buf = np.concatenate([ids, np.zeros((3, new), np.int32)], 1)
  buf_mask = np.concatenate([mask, np.zeros((3, new), np.int32)], 1)
  forward = jax.jit(lambda i, m, t: jnp.argmax(model(i, attention_mask=m)[:, t], axis=-1))
  for t in range(P - 1, P - 1 + new):
    buf[:, t + 1] = np.asarray(forward(buf, buf_mask, t))
    buf_mask[:, t + 1] = 1
  np.testing.assert_array_equal(buf[:, P:], ref)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_reloads_in_transformers_with_identical_logits(tiny_decoder_dir, tmp_path, variant):
  model = load_hf_decoder(tiny_decoder_dir(variant))
  export_hf(model, tmp_path / "export")
  ids, mask = _batch(model.config.vocab_size, seed=2)
  ours = np.asarray(model(ids, attention_mask=mask))
  ref = _hf_logits(tmp_path / "export", ids, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)
  # and our own loader reads the export back bit for bit
  again = load_hf_decoder(tmp_path / "export")
  np.testing.assert_array_equal(np.asarray(again(ids, attention_mask=mask)), ours)


def test_sharded_load_matches_single_device(tiny_decoder_dir):
  folder = tiny_decoder_dir("qwen3_untied_attn_bias")
  single = load_hf_decoder(folder)
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = load_hf_decoder(folder, mesh=mesh, rules=DEFAULT_RULES)
  q = sharded.layers.q[...]
  # [L, D, N, H]: D over fsdp, N over tensor, and each device holds only its block.
  assert q.sharding.spec[1:3] == ("fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2,
                                                q.shape[3])
  ids, mask = _batch(single.config.vocab_size, seed=3)
  np.testing.assert_allclose(np.asarray(sharded(ids, attention_mask=mask)),
                             np.asarray(single(ids, attention_mask=mask)), atol=1e-5, rtol=0)


def test_sharded_safetensors_index_is_read(tiny_decoder_dir, tmp_path):
  from darling_jax.models.hf_decoder import decoder_to_hf_tensors
  from darling_jax.models.safetensors_io import save_safetensors

  folder = tiny_decoder_dir("llama_tied_bias")
  model = load_hf_decoder(folder)
  out = tmp_path / "sharded"
  save_safetensors(decoder_to_hf_tensors(model), out, max_shard_bytes=64 << 10)
  (out / "config.json").write_text((folder / "config.json").read_text())
  assert (out / "model.safetensors.index.json").exists()
  assert len(list(out.glob("model-*.safetensors"))) > 2
  ids, mask = _batch(model.config.vocab_size)
  np.testing.assert_array_equal(np.asarray(load_hf_decoder(out)(ids, attention_mask=mask)),
                                np.asarray(model(ids, attention_mask=mask)))


def test_bf16_compute_stays_close(tiny_decoder_dir):
  folder = tiny_decoder_dir("qwen3_tied")
  f32 = load_hf_decoder(folder)
  bf16 = load_hf_decoder(folder, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
  assert bf16.layers.q[...].dtype == jnp.bfloat16
  ids, mask = _batch(f32.config.vocab_size)
  a = np.asarray(f32(ids, attention_mask=mask))
  b = np.asarray(bf16(ids, attention_mask=mask))
  assert b.dtype == np.float32  # logits are always returned in float32
  valid = mask.astype(bool)
  assert np.abs(a[valid] - b[valid]).max() < 0.1  # bf16 weights: ~3 significant digits


# ---- bad input: one InputError naming the file and the problem -----------------------------------

def test_missing_config(tmp_path):
  with pytest.raises(InputError, match="config.json"):
    load_hf_decoder(tmp_path)


def test_unknown_architecture(tiny_decoder_dir, tmp_path):
  import shutil

  folder = shutil.copytree(tiny_decoder_dir("qwen3_tied"), tmp_path / "m")
  cfg = json.loads((folder / "config.json").read_text())
  cfg["model_type"] = "mamba"
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(InputError, match="unknown architecture model_type='mamba'"):
    load_hf_decoder(folder)


def test_shape_mismatch_names_tensor(tiny_decoder_dir, tmp_path):
  import shutil

  folder = shutil.copytree(tiny_decoder_dir("qwen3_tied"), tmp_path / "m")
  cfg = json.loads((folder / "config.json").read_text())
  cfg["intermediate_size"] = 80
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(InputError, match=r"mlp\.gate_proj\.weight.*shape"):
    load_hf_decoder(folder)


def test_truncated_safetensors(tiny_decoder_dir, tmp_path):
  import shutil

  folder = shutil.copytree(tiny_decoder_dir("qwen3_tied"), tmp_path / "m")
  st = folder / "model.safetensors"
  st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
  with pytest.raises(InputError, match="model.safetensors.*truncated"):
    load_hf_decoder(folder)


def test_garbage_safetensors(tmp_path, tiny_decoder_dir):
  import shutil

  folder = shutil.copytree(tiny_decoder_dir("qwen3_tied"), tmp_path / "m")
  (folder / "model.safetensors").write_bytes(b"\x00\x01garbage")
  with pytest.raises(InputError, match="model.safetensors"):
    load_hf_decoder(folder)


def test_missing_tensor(tiny_decoder_dir, tmp_path):
  import shutil

  from darling_jax.models.safetensors_io import SafetensorsFolder, save_safetensors

  folder = shutil.copytree(tiny_decoder_dir("llama_llama3_rope_untied"), tmp_path / "m")
  tensors = {k: np.array(v) for k, v in SafetensorsFolder(folder).items() if k != "lm_head.weight"}
  save_safetensors(tensors, folder)
  with pytest.raises(InputError, match="lm_head.weight is missing"):
    load_hf_decoder(folder)
