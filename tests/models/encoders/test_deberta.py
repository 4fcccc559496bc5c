"""DeBERTa-v2/v3 parity with transformers (torch CPU) on tiny random checkpoints in tmp_path."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.encoders import deberta as db
from darling_jax.sharding import DEFAULT_RULES, MeshConfig, make_mesh
from testing_support.encoder_folders import edited_copy, perturb_and_save, table_shapes
from testing_support.variant_cache import cached_by_variant

pytestmark = pytest.mark.torch

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64)
# Together: v3 (buckets, shared keys, c2p+p2c, LN'd rel embeddings, no absolute positions) vs v2
# (ConvLayer with groups, unshared c2p only, clamped distances, absolute + segment embeddings,
# embed_proj, explicit attention_head_size), p2c alone, no relative attention; heads on and off.
VARIANTS = {
    "v3_shared_both_buckets": (dict(
        relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type="p2c|c2p", position_biased_input=False, type_vocab_size=0), 2),
    "v2_conv_c2p_bare": (dict(
        relative_attention=True, max_relative_positions=5, conv_kernel_size=3, conv_act="gelu",
        conv_groups=2, share_att_key=False, pos_att_type=["c2p"], position_biased_input=True,
        type_vocab_size=2, embedding_size=24, attention_head_size=8), 0),
    "p2c_unshared_buckets": (dict(
        relative_attention=True, position_buckets=6, norm_rel_ebd="layer_norm",
        share_att_key=False, pos_att_type=["p2c"], position_biased_input=False,
        hidden_act="gelu_new", pooler_hidden_act="tanh"), 3),
    "absolute_only": (dict(relative_attention=False, position_biased_input=True,
                           type_vocab_size=2), 2),
}


def _write(folder: pathlib.Path, variant: str, seed: int = 0):
  import torch
  import transformers

  kwargs, labels = VARIANTS[variant]
  config = transformers.DebertaV2Config(**BASE, **kwargs, num_labels=max(labels, 2))
  torch.manual_seed(seed)
  cls = (transformers.DebertaV2ForSequenceClassification if labels else
         transformers.DebertaV2Model)
  return perturb_and_save(cls(config).eval(), folder, norm_weight="LayerNorm.weight")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """get(variant) -> (folder, the transformers model written there)."""
  return cached_by_variant(tmp_path_factory, lambda folder, v: (folder, _write(folder, v)))


def _batch(seed: int = 0, segments: bool = False):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, BASE["vocab_size"], size=(3, 12))
  mask = np.ones((3, 12), np.int64)
  mask[1, 9:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  return ids, mask, (rng.integers(0, 2, size=(3, 12)) * mask if segments else None)


@nnx.jit
def _run(model, ids, mask, segments):
  return model(ids, mask, segments)


def _torch_outputs(model, ids, mask, segments):
  import torch

  kw = dict(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
            token_type_ids=None if segments is None else torch.as_tensor(segments))
  with torch.no_grad():
    if hasattr(model, "classifier"):
      hidden = model.deberta(**kw).last_hidden_state
      pooled = model.pooler(hidden).numpy()
      return hidden.numpy(), pooled, model(**kw).logits.numpy()
    return model(**kw).last_hidden_state.numpy(), None, None


# Each variant costs one XLA compile (~2.5 s CPU); the v3 and v2 layouts run by default.
@pytest.mark.parametrize("variant", ["v3_shared_both_buckets", "v2_conv_c2p_bare",
                                     pytest.param("p2c_unshared_buckets", marks=pytest.mark.slow),
                                     pytest.param("absolute_only", marks=pytest.mark.slow)])
def test_parity_with_transformers(checkpoint, variant):
  folder, ref = checkpoint(variant)
  ids, mask, segments = _batch(segments=bool(ref.config.type_vocab_size))
  hidden_ref, pooled_ref, logits_ref = _torch_outputs(ref, ids, mask, segments)
  logits, out = _run(db.load(folder), jnp.asarray(ids), jnp.asarray(mask),
                     None if segments is None else jnp.asarray(segments))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out["hidden"])[valid], hidden_ref[valid], atol=1e-4, rtol=0)
  mean_ref = (hidden_ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out["mean"]), mean_ref, atol=1e-4, rtol=0)
  if logits_ref is None:
    assert logits is None
    np.testing.assert_allclose(np.asarray(out["pooled"]), hidden_ref[:, 0], atol=1e-4, rtol=0)
    return
  np.testing.assert_allclose(np.asarray(out["pooled"]), pooled_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out["pre_logits"]), pooled_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits), logits_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("buckets,max_position,length", [(256, 512, 512), (8, 64, 40), (6, 5, 20),
                                                         (-1, 5, 12)])
def test_relative_buckets_match_transformers(buckets, max_position, length):
  import torch
  from transformers.models.deberta_v2 import modeling_deberta_v2 as hf

  x = torch.zeros(1, length, 1)
  want = hf.build_relative_position(x, x, bucket_size=buckets, max_position=max_position)
  np.testing.assert_array_equal(db.relative_buckets(length, buckets, max_position), want[0].numpy())


@pytest.mark.parametrize("variant", ["v3_shared_both_buckets", "v2_conv_c2p_bare"])
def test_export_reloads_in_transformers_identically(checkpoint, variant, tmp_path):
  folder, ref = checkpoint(variant)
  model = db.load(folder)
  db.export(model, tmp_path / "out")
  # Both sides loaded from disk: an in-memory torch model can differ from its reload by 1e-6.
  before = type(ref).from_pretrained(folder).eval()
  again = type(ref).from_pretrained(tmp_path / "out").eval()
  ids, mask, segments = _batch(1, segments=bool(ref.config.type_vocab_size))
  for a, b in zip(_torch_outputs(before, ids, mask, segments),
                  _torch_outputs(again, ids, mask, segments)):
    if a is not None:
      np.testing.assert_array_equal(a, b)
  assert db.load(tmp_path / "out").config == model.config


@pytest.mark.slow
def test_random_model_export_matches_transformers(tmp_path):
  """Export from a model never loaded from HF: transformers computes what we compute."""
  import torch
  import transformers

  cfg = db.Config.tiny(num_labels=2)
  model = db.Model(cfg, rngs=nnx.Rngs(3))
  db.export(model, tmp_path)
  ref = transformers.DebertaV2ForSequenceClassification.from_pretrained(tmp_path).eval()
  ids, mask, _ = _batch(2)
  logits, out = _run(model, jnp.asarray(ids), jnp.asarray(mask), None)
  with torch.no_grad():
    want = ref(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
  np.testing.assert_allclose(np.asarray(logits), want.numpy(), atol=1e-4, rtol=0)
  assert out["hidden"].shape == (*ids.shape, cfg.hidden_size)
  assert all(out[k].shape == (len(ids), cfg.hidden_size) for k in ("pooled", "mean", "pre_logits"))


# microsoft/deberta-v3-large's config.json plus what a 2-label fine-tune (the NoveltyBench
# similarity classifier's architecture) adds.
DEBERTA_V3_LARGE = {
    "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 4096, "max_position_embeddings": 512, "relative_attention": True,
    "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": True,
    "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7, "max_relative_positions": -1,
    "position_biased_input": False, "num_attention_heads": 16, "num_hidden_layers": 24,
    "type_vocab_size": 0, "vocab_size": 128100,
    "architectures": ["DebertaV2ForSequenceClassification"], "id2label": {"0": "0", "1": "1"},
    "label2id": {"0": 0, "1": 1}, "pooler_dropout": 0, "pooler_hidden_act": "gelu",
    "pooler_hidden_size": 1024, "torch_dtype": "float32", "transformers_version": "4.44.2",
    "_name_or_path": "microsoft/deberta-v3-large", "problem_type": "single_label_classification",
}


def test_published_config_maps_onto_every_transformers_tensor():
  """DeBERTa-v3-large: our table names exactly the tensors and shapes transformers builds."""
  import torch
  import transformers

  cfg = db.Config.from_hf(DEBERTA_V3_LARGE)
  assert (cfg.num_labels, cfg.span, cfg.max_relative, cfg.pos_att_type) == (
      2, 256, 512, ("p2c", "c2p"))
  ours = table_shapes(db, cfg, "deberta.")
  hf = transformers.AutoConfig.for_model(**DEBERTA_V3_LARGE)
  with torch.device("meta"):  # shapes only, no 1.7 GB of weights
    ref = transformers.DebertaV2ForSequenceClassification(hf)
  assert ours == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.slow
def test_sharded_load_matches_single_device(checkpoint):
  folder, _ = checkpoint("v3_shared_both_buckets")
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = db.load(folder, mesh=mesh, rules=DEFAULT_RULES)
  spec = sharded.layers["wq"][...].sharding.spec
  assert "tensor" in jax.tree.leaves(tuple(spec)), spec  # heads really split over the tensor axis
  ids, mask, _ = _batch()
  want, _ = _run(db.load(folder), jnp.asarray(ids), jnp.asarray(mask), None)
  got, _ = _run(sharded, jnp.asarray(ids), jnp.asarray(mask), None)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_bad_inputs_name_the_culprit(checkpoint, tmp_path):
  folder, _ = checkpoint("v3_shared_both_buckets")
  with pytest.raises(InputError, match="config.json: file not found"):
    db.load(tmp_path / "nowhere")
  bad_json = tmp_path / "bad_json"
  bad_json.mkdir()
  (bad_json / "config.json").write_text("{not json")
  with pytest.raises(InputError, match="config.json: not a readable JSON"):
    db.load(bad_json)
  cases = {
      "bar_option": dict(config_edit=lambda c: c.update(bar_option=[1])),
      "pos_att_type": dict(config_edit=lambda c: c.update(pos_att_type="p2p|c2p")),
      "norm_rel_ebd": dict(config_edit=lambda c: c.update(norm_rel_ebd="rms_norm")),
      "conv_kernel_size": dict(config_edit=lambda c: c.update(conv_kernel_size=2)),
      "pooler_hidden_size": dict(config_edit=lambda c: c.update(pooler_hidden_size=16)),
      "num_attention_heads": dict(config_edit=lambda c: c.update(num_attention_heads=5)),
      "encoder.rel_embeddings.weight": dict(tensor_edit=lambda t: t.update(
          {"deberta.encoder.rel_embeddings.weight": np.zeros((8, 32), np.float32)})),
      "deberta.encoder.layer.1.attention.self.query_proj.bias": dict(tensor_edit=lambda t: t.pop(
          "deberta.encoder.layer.1.attention.self.query_proj.bias")),
      "no classifier.weight": dict(tensor_edit=lambda t: t.pop("classifier.weight")),
  }
  for i, (culprit, edit) in enumerate(cases.items()):
    bad = edited_copy(folder, tmp_path / f"bad{i}", **edit)
    with pytest.raises(InputError, match=culprit.replace(".", r"\.")) as err:
      db.load(bad)
    # One clean error: no chained traceback from deep inside numpy/json.
    assert err.value.__cause__ is None, culprit
    assert err.value.__context__ is None or err.value.__suppress_context__, culprit
