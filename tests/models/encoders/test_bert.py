"""Tests `darling_jax/models/encoders/bert.py` against transformers' BertModel (torch, float32)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.models import encoders
from darling_jax.models.encoders import bert

TOL = 1e-4


def _hf_tiny(tmp_path, seq_cls: bool, pooler: bool = True):
  import torch
  import transformers

  cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37,
                                max_position_embeddings=64, num_labels=2)
  torch.manual_seed(0)
  if seq_cls:
    model = transformers.BertForSequenceClassification(cfg)
  else:
    model = transformers.BertModel(cfg, add_pooling_layer=pooler)
  with torch.no_grad():  # non-trivial LayerNorm affine params and biases
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.eval()
  folder = tmp_path / ("cls" if seq_cls else "base")
  model.save_pretrained(folder)
  return model, folder


def _padded_batch(rng, lengths, L, vocab=99):
  ids = rng.integers(1, vocab, size=(len(lengths), L)).astype(np.int32)
  mask = np.zeros((len(lengths), L), np.int32)
  types = np.zeros((len(lengths), L), np.int32)
  for r, n in enumerate(lengths):
    mask[r, :n] = 1
    ids[r, n:] = 0
    types[r, n // 2:n] = 1
  return ids, mask, types


def _torch_out(model, ids, mask, types):
  import torch

  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long),
                 token_type_ids=torch.tensor(types, dtype=torch.long))


@pytest.mark.torch
@pytest.mark.parametrize("seq_cls", [False, True])
def test_parity_tiny_padded(tmp_path, seq_cls):
  hf_model, folder = _hf_tiny(tmp_path, seq_cls)
  model = bert.load(folder)
  ids, mask, types = _padded_batch(np.random.default_rng(0), [13, 7, 1, 20], 20)
  logits, out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  ref = _torch_out(hf_model, ids, mask, types)
  if seq_cls:
    np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=TOL, rtol=0)
    base = hf_model.bert
    ref = _torch_out(base, ids, mask, types)
  else:
    assert logits is None
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out["hidden"])[real], ref.last_hidden_state.numpy()[real],
                             atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(out["pooled"]), ref.pooler_output.numpy(), atol=TOL, rtol=0)
  assert out["mean"].shape == (4, 32) and out["pre_logits"].shape == (4, 32)


@pytest.mark.torch
def test_padding_does_not_change_real_positions(tmp_path):
  _, folder = _hf_tiny(tmp_path, seq_cls=False)
  model = bert.load(folder)
  ids, mask, types = _padded_batch(np.random.default_rng(1), [9, 9], 9)
  _, short = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  pad = lambda x: np.pad(x, ((0, 0), (0, 11)))
  _, long = model(jnp.asarray(pad(ids)), jnp.asarray(pad(mask)), jnp.asarray(pad(types)))
  np.testing.assert_allclose(np.asarray(long["hidden"])[:, :9], np.asarray(short["hidden"]),
                             atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(long["mean"]), np.asarray(short["mean"]), atol=1e-5, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("seq_cls", [False, True])
def test_export_reloads_in_transformers(tmp_path, seq_cls):
  import transformers

  _, folder = _hf_tiny(tmp_path, seq_cls)
  model = bert.load(folder)
  bert.export(model, tmp_path / "export")
  cls = transformers.BertForSequenceClassification if seq_cls else transformers.BertModel
  reloaded = cls.from_pretrained(tmp_path / "export").eval()
  ids, mask, types = _padded_batch(np.random.default_rng(2), [5, 11], 11)
  logits, out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  ref = _torch_out(reloaded, ids, mask, types)
  if seq_cls:
    np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=TOL, rtol=0)
  else:
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out["hidden"])[real],
                               ref.last_hidden_state.numpy()[real], atol=TOL, rtol=0)
  # Our own reload of the export is bit-identical.
  again = bert.load(tmp_path / "export")
  for a, b in zip(jax.tree.leaves(nnx_state(model)), jax.tree.leaves(nnx_state(again))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def nnx_state(model):
  from flax import nnx
  return nnx.state(model, nnx.Param)


@pytest.mark.torch
def test_minilm_mean_pooling_matches_transformers():
  import torch
  import transformers

  path = encoders.default_encoder_path()
  model, tok = encoders.load_encoder(path)
  texts = ["A cat sat on the mat.", "Quantum chromodynamics describes the strong interaction "
           "between quarks and gluons.", "ok"]
  hf_tok = transformers.AutoTokenizer.from_pretrained(path)
  batch = hf_tok(texts, padding=True, return_tensors="np")
  ours = [tok.single(x) for x in tok.encode(texts, 256)]
  for r, row in enumerate(ours):  # our host tokenisation equals the HF tokenizer's
    assert row == batch["input_ids"][r][batch["attention_mask"][r] == 1].tolist()
  _, out = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                 jnp.asarray(batch["token_type_ids"]))
  hf = transformers.AutoModel.from_pretrained(path).eval()
  with torch.no_grad():
    h = hf(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state
  m = torch.tensor(batch["attention_mask"], dtype=torch.float32)[..., None]
  ref = ((h * m).sum(1) / m.sum(1)).numpy()
  np.testing.assert_allclose(np.asarray(out["mean"]), ref, atol=TOL, rtol=0)


def test_tiny_config_and_random_init_shapes():
  from flax import nnx

  c = bert.Config.tiny(num_labels=3)
  model = bert.Model(c, rngs=nnx.Rngs(0))
  logits, out = model(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32), None)
  assert logits.shape == (2, 3) and out["hidden"].shape == (2, 5, 32)
  # Every parameter carries one logical axis name per dimension.
  for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    assert len(v.get_metadata()["out_sharding"]) == v.get_value().ndim


def test_bad_inputs(tmp_path):
  from flax import nnx

  model = bert.Model(bert.Config.tiny(), rngs=nnx.Rngs(0))
  with pytest.raises(InputError, match="max_position_embeddings"):
    model(jnp.ones((1, 65), jnp.int32), jnp.ones((1, 65), jnp.int32))
  with pytest.raises(InputError, match="attention_mask"):
    model(jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32))
  with pytest.raises(InputError, match="config.json"):
    bert.load(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(InputError, match="unsupported encoder"):
    encoders.load_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
  with pytest.raises(InputError, match="missing BERT field"):
    bert.load(tmp_path)
  with pytest.raises(InputError, match="divisible"):
    bert.Config(vocab_size=10, hidden_size=30, num_layers=1, num_heads=4, intermediate_size=8)
