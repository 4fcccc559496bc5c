"""ModernBERT parity with transformers (torch CPU) on tiny random checkpoints in tmp_path."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.encoders import modernbert as mb
from darling_jax.sharding import DEFAULT_RULES, MeshConfig, make_mesh
from testing_support.encoder_folders import edited_copy, perturb_and_save, table_shapes
from testing_support.variant_cache import cached_by_variant

pytestmark = pytest.mark.torch

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
# Together: cls / mean pooling, every bias flag off / on, local windows narrower than the sequence
# (12 tokens), all-global layers, several activations, with and without the classification head.
VARIANTS = {
    "cls_nobias_window4": (dict(num_hidden_layers=4, local_attention=4, num_labels=3), True),
    "mean_all_bias_every2": (dict(
        num_hidden_layers=3, local_attention=6, global_attn_every_n_layers=2,
        classifier_pooling="mean", attention_bias=True, mlp_bias=True, norm_bias=True,
        classifier_bias=True, hidden_activation="gelu_pytorch_tanh",
        classifier_activation="silu", global_rope_theta=5000.0, local_rope_theta=300.0), True),
    "bare_all_global": (dict(num_hidden_layers=2, global_attn_every_n_layers=1), False),
}


def _write(folder: pathlib.Path, variant: str, seed: int = 0):
  import torch
  import transformers

  kwargs, head = VARIANTS[variant]
  config = transformers.ModernBertConfig(**BASE, **kwargs, attn_implementation="eager")
  torch.manual_seed(seed)
  cls = transformers.ModernBertForSequenceClassification if head else transformers.ModernBertModel
  return perturb_and_save(cls(config).eval(), folder, norm_weight="norm.weight")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """get(variant) -> (folder, the transformers model written there)."""
  return cached_by_variant(tmp_path_factory, lambda folder, v: (folder, _write(folder, v)))


def _batch(seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, BASE["vocab_size"], size=(3, 12))
  mask = np.ones((3, 12), np.int64)
  mask[1, 9:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = BASE["pad_token_id"]
  return ids, mask


@nnx.jit
def _run(model, ids, mask):
  return model(ids, mask)


def _torch_outputs(model, ids, mask):
  import torch

  ids_t, mask_t = torch.as_tensor(ids), torch.as_tensor(mask)
  with torch.no_grad():
    if hasattr(model, "classifier"):
      hidden = model.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
      logits = model(input_ids=ids_t, attention_mask=mask_t).logits.numpy()
    else:
      hidden, logits = model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state, None
  return hidden.numpy(), logits


# Each variant costs one XLA compile (~2.5 s CPU); the third only adds the no-head/all-global path.
@pytest.mark.parametrize("variant", ["cls_nobias_window4", "mean_all_bias_every2",
                                     pytest.param("bare_all_global", marks=pytest.mark.slow)])
def test_parity_with_transformers(checkpoint, variant):
  import torch

  folder, ref = checkpoint(variant)
  ids, mask = _batch()
  hidden_ref, logits_ref = _torch_outputs(ref, ids, mask)
  logits, out = _run(mb.load(folder), jnp.asarray(ids), jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out["hidden"])[valid], hidden_ref[valid], atol=1e-4, rtol=0)
  mean_ref = ((hidden_ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(out["mean"]), mean_ref, atol=1e-4, rtol=0)
  if logits_ref is None:
    assert logits is None
    return
  pooled_ref = mean_ref if ref.config.classifier_pooling == "mean" else hidden_ref[:, 0]
  with torch.no_grad():
    pre_ref = ref.head(torch.as_tensor(pooled_ref)).numpy()
  np.testing.assert_allclose(np.asarray(out["pooled"]), pooled_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out["pre_logits"]), pre_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits), logits_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["mean_all_bias_every2", "bare_all_global"])
def test_export_reloads_in_transformers_identically(checkpoint, variant, tmp_path):
  import transformers

  folder, ref = checkpoint(variant)
  model = mb.load(folder)
  mb.export(model, tmp_path / "out")
  # Both sides loaded from disk: an in-memory torch model can differ from its reload by 1e-6.
  before = type(ref).from_pretrained(folder, attn_implementation="eager").eval()
  again = type(ref).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
  ids, mask = _batch(1)
  for a, b in zip(_torch_outputs(before, ids, mask), _torch_outputs(again, ids, mask)):
    if a is not None:
      np.testing.assert_array_equal(a, b)
  assert mb.load(tmp_path / "out").config == model.config
  assert isinstance(again.config, transformers.ModernBertConfig)


@pytest.mark.slow
def test_random_model_export_matches_transformers(tmp_path):
  """Export from a model never loaded from HF: transformers computes what we compute."""
  import torch
  import transformers

  cfg = mb.Config.tiny(num_labels=2)
  model = mb.Model(cfg, rngs=nnx.Rngs(3))
  mb.export(model, tmp_path)
  ref = transformers.ModernBertForSequenceClassification.from_pretrained(
      tmp_path, attn_implementation="eager").eval()
  ids, mask = _batch(2)
  ids = ids % cfg.vocab_size
  logits, out = _run(model, jnp.asarray(ids), jnp.asarray(mask))
  with torch.no_grad():
    want = ref(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
  np.testing.assert_allclose(np.asarray(logits), want.numpy(), atol=1e-4, rtol=0)
  assert cfg.layer_types == ("full_attention", "sliding_attention", "sliding_attention")
  assert out["hidden"].shape == (*ids.shape, cfg.hidden_size)
  assert all(out[k].shape == (len(ids), cfg.hidden_size) for k in ("pooled", "mean", "pre_logits"))


def test_legacy_config_form_matches_transformers():
  import transformers

  legacy = dict(model_type="modernbert", num_hidden_layers=7, global_attn_every_n_layers=3,
                global_rope_theta=80000.0, local_rope_theta=2000.0, local_attention=64,
                hidden_size=64, num_attention_heads=4, position_embedding_type="absolute",
                architectures=["ModernBertForMaskedLM"], reference_compile=None)
  cfg = mb.Config.from_hf(legacy)
  hf = transformers.ModernBertConfig(**{k: v for k, v in legacy.items() if k != "model_type"})
  assert list(cfg.layer_types) == hf.layer_types
  assert cfg.global_rope_theta == hf.rope_parameters["full_attention"]["rope_theta"]
  assert cfg.local_rope_theta == hf.rope_parameters["sliding_attention"]["rope_theta"]
  again = mb.Config.from_hf(cfg.to_hf())
  assert cfg.num_labels is None and cfg.pad_token_id == 50283  # transformers defaults
  assert dataclasses.replace(again, passthrough=cfg.passthrough) == cfg


# answerdotai/ModernBERT-base's config.json (transformers 4.47 form), as a 2-label classifier.
MODERNBERT_BASE = {
    "architectures": ["ModernBertForSequenceClassification"], "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 50281, "classifier_activation": "gelu",
    "classifier_bias": False, "classifier_dropout": 0.0, "classifier_pooling": "mean",
    "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
    "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0, "gradient_checkpointing": False, "hidden_activation": "gelu",
    "hidden_size": 768, "initializer_cutoff_factor": 2.0, "initializer_range": 0.02,
    "intermediate_size": 1152, "layer_norm_eps": 1e-05, "local_attention": 128,
    "local_rope_theta": 10000.0, "max_position_embeddings": 8192, "mlp_bias": False,
    "mlp_dropout": 0.0, "model_type": "modernbert", "norm_bias": False, "norm_eps": 1e-05,
    "num_attention_heads": 12, "num_hidden_layers": 22, "pad_token_id": 50283,
    "position_embedding_type": "absolute", "sep_token_id": 50282, "tie_word_embeddings": True,
    "torch_dtype": "float32", "transformers_version": "4.47.0.dev0", "vocab_size": 50368,
    "id2label": {"0": "different", "1": "similar"}, "label2id": {"different": 0, "similar": 1},
}


def test_published_config_maps_onto_every_transformers_tensor():
  """ModernBERT-base: our tensor table names exactly the tensors and shapes transformers builds."""
  import torch
  import transformers

  cfg = mb.Config.from_hf(MODERNBERT_BASE)
  assert cfg.num_labels == 2 and cfg.classifier_pooling == mb.Pooling.MEAN
  assert cfg.layer_types[:4] == ("full_attention", "sliding_attention", "sliding_attention",
                                 "full_attention")
  ours = table_shapes(mb, cfg, "model.")
  hf = transformers.AutoConfig.for_model(**MODERNBERT_BASE)
  with torch.device("meta"):  # shapes only, no 600 MB of weights
    ref = transformers.ModernBertForSequenceClassification(hf)
  assert ours == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.slow
def test_sharded_load_matches_single_device(checkpoint):
  folder, _ = checkpoint("cls_nobias_window4")
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = mb.load(folder, mesh=mesh, rules=DEFAULT_RULES)
  spec = sharded.layers["wqkv"][...].sharding.spec
  assert "tensor" in jax.tree.leaves(tuple(spec)), spec  # heads really split over the tensor axis
  ids, mask = _batch()
  want, _ = _run(mb.load(folder), jnp.asarray(ids), jnp.asarray(mask))
  got, _ = _run(sharded, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bfloat16_load_is_close(checkpoint):
  folder, _ = checkpoint("cls_nobias_window4")
  ids, mask = _batch()
  want, _ = _run(mb.load(folder), jnp.asarray(ids), jnp.asarray(mask))
  model = mb.load(folder, dtype=jnp.bfloat16)
  assert model.layers["wi"][...].dtype == jnp.bfloat16
  got, _ = _run(model, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.15, rtol=0.05)


def test_bad_inputs_name_the_culprit(checkpoint, tmp_path):
  folder, _ = checkpoint("cls_nobias_window4")
  with pytest.raises(InputError, match="config.json: file not found"):
    mb.load(tmp_path / "nowhere")
  cases = {
      "foo_option": dict(config_edit=lambda c: c.update(foo_option=1)),
      "classifier_pooling": dict(config_edit=lambda c: c.update(classifier_pooling="max")),
      "hidden_activation": dict(config_edit=lambda c: c.update(hidden_activation="swiglu9")),
      "rope_parameters": dict(config_edit=lambda c: c["rope_parameters"]["full_attention"].update(
          rope_type="yarn")),
      "hidden_size": dict(config_edit=lambda c: c.update(hidden_size="32")),
      "model_type": dict(config_edit=lambda c: c.update(model_type="bert")),
      "layers.1.attn.Wqkv.weight": dict(tensor_edit=lambda t: t.update(
          {"model.layers.1.attn.Wqkv.weight": np.zeros((96, 31), np.float32)})),
      "model.final_norm.weight": dict(tensor_edit=lambda t: t.pop("model.final_norm.weight")),
  }
  for i, (culprit, edit) in enumerate(cases.items()):
    bad = edited_copy(folder, tmp_path / f"bad{i}", **edit)
    with pytest.raises(InputError, match=culprit.replace(".", r"\.")) as err:
      mb.load(bad)
    # One clean error: no chained traceback from deep inside numpy/json.
    assert err.value.__cause__ is None, culprit
    assert err.value.__context__ is None or err.value.__suppress_context__, culprit
  (bad := tmp_path / "no_weights").mkdir()
  (bad / "config.json").write_text((folder / "config.json").read_text())
  with pytest.raises(InputError, match="no model.safetensors"):
    mb.load(bad)
