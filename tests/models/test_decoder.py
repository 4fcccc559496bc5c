"""Tests `darling_jax/models/decoder.py`: cache forward, masking, causality, config round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder, positions_from_mask
from darling_jax.models.decoder_config import DecoderConfig, Family, RopeScaling, RopeType


@pytest.fixture(params=list(Family))
def model(request):
  return Decoder(DecoderConfig.tiny(request.param), rngs=nnx.Rngs(0))


def test_positions_skip_left_padding():
  mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(positions_from_mask(mask),
                                [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 0, 0]])


def test_left_padding_does_not_change_real_positions(model):
  ids = jnp.array([[5, 6, 7, 8]])
  padded = jnp.array([[0, 0, 5, 6, 7, 8]])
  mask = jnp.array([[0, 0, 1, 1, 1, 1]])
  np.testing.assert_allclose(model(padded, attention_mask=mask)[:, 2:], model(ids), atol=1e-5)


def test_causality_by_gradient():
  """d logits[t] / d embedding[s] == 0 for s > t, for every t (one jitted Jacobian)."""
  model = Decoder(DecoderConfig.tiny(Family.QWEN3), rngs=nnx.Rngs(0))
  ids = jnp.array([[3, 4, 5, 6, 7]])
  emb = model.embed_tokens(ids)
  graphdef, state = nnx.split(model)

  @jax.jit
  def jac(state, e):
    m = nnx.merge(graphdef, state)
    per_t = lambda e: m.logits(m.hidden_states(ids, inputs_embeds=e))[0].sum(-1)  # noqa: E731
    return jax.jacrev(per_t)(e)  # [T, 1, T, D]

  norms = np.abs(np.asarray(jac(state, emb)))[:, 0].sum(-1)  # [t, s]
  T = ids.shape[1]
  future = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(norms[future] == 0)
  assert np.all(norms[~future] > 0)


def test_cache_forward_equals_full_forward(model):
  """Prefill of a left-padded prompt then token-by-token extend == the full forward."""
  rng = np.random.default_rng(0)
  B, P, new = 2, 6, 5
  ids = rng.integers(3, model.config.vocab_size, (B, P + new)).astype(np.int32)
  mask = np.ones((B, P + new), np.int32)
  mask[1, :3] = 0  # row 1 left-padded by 3
  full = np.asarray(model(ids, attention_mask=mask))
  graphdef, state = nnx.split(model)

  @jax.jit
  def extend(state, *args):
    m = nnx.merge(graphdef, state)
    h, c = m.extend(*args)
    return m.logits(h), c

  cache = model.init_cache(B, P + new, dtype=jnp.float32)
  pos = positions_from_mask(jnp.asarray(mask))
  kv_mask = jnp.zeros((B, P + new), bool).at[:, :P].set(mask[:, :P].astype(bool))
  logits, cache = extend(state, jnp.asarray(ids[:, :P]), pos[:, :P], cache, jnp.int32(0), kv_mask)
  got = [np.asarray(logits)]
  for t in range(P, P + new):
    kv_mask = kv_mask.at[:, t].set(True)
    logits, cache = extend(state, jnp.asarray(ids[:, t:t + 1]), pos[:, t:t + 1], cache,
                           jnp.int32(t), kv_mask)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], full[valid], atol=1e-5, rtol=0)


def test_remat_gives_same_gradients():
  cfg = DecoderConfig.tiny(Family.QWEN3)
  a = Decoder(cfg, rngs=nnx.Rngs(1))
  b = Decoder(cfg, rngs=nnx.Rngs(1), remat=True)
  ids = jnp.array([[3, 4, 5, 6]])
  loss = lambda m: m(ids).sum()  # noqa: E731
  ga = nnx.state(nnx.jit(nnx.grad(loss))(a))
  gb = nnx.state(nnx.jit(nnx.grad(loss))(b))
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["smollm2_135m", "qwen3_0p6b", "qwen3_4b_base",
                                    "llama3p1_8b_instruct"])
def test_presets_build_abstractly_and_round_trip_hf(preset):
  cfg = getattr(DecoderConfig, preset)()
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract)))
  assert n == cfg.num_params
  assert DecoderConfig.from_hf(cfg.to_hf()) == cfg


def test_published_parameter_counts():
  # Public model cards: SmolLM2-135M 134.5M, Qwen3-0.6B 596M (tied), Llama-3.1-8B 8.03B.
  assert abs(DecoderConfig.smollm2_135m().num_params - 134.5e6) < 0.1e6
  assert abs(DecoderConfig.qwen3_0p6b().num_params - 596e6) < 1e6
  assert abs(DecoderConfig.llama3p1_8b_instruct().num_params - 8.03e9) < 0.01e9


def test_config_errors_name_the_field():
  base = DecoderConfig.tiny().to_hf()
  with pytest.raises(InputError, match="num_key_value_heads"):
    DecoderConfig.from_hf({**base, "num_key_value_heads": 3})
  with pytest.raises(InputError, match="rope_type='yarn'"):
    DecoderConfig.from_hf({**base, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(InputError, match="missing field 'hidden_size'"):
    DecoderConfig.from_hf({k: v for k, v in base.items() if k != "hidden_size"})
  with pytest.raises(InputError, match="hidden_act"):
    DecoderConfig.from_hf({**base, "hidden_act": "gelu"})


def test_llama3_rope_frequencies_match_transformers():
  pytest.importorskip("transformers")
  import torch
  from transformers import LlamaConfig
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  from darling_jax.models.decoder_config import rope_inv_freq

  scaling = RopeScaling(RopeType.LLAMA3, 8.0, 1.0, 4.0, 8192)
  cfg = DecoderConfig.llama3p1_8b_instruct()
  assert cfg.rope_scaling == scaling
  hf_cfg = LlamaConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
  ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, torch.device("cpu"))
  np.testing.assert_allclose(rope_inv_freq(cfg), ref.numpy(), rtol=1e-6)
