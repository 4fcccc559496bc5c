"""The compiled rollout sampler vs full-sequence forwards of the same tiny decoder."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.decoder import attend
from darling_jax.sampling import sampler as sampler_lib
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.sampler import sample, sample_model, shared_prefix_attend
from darling_jax.sharding import MeshConfig, make_mesh


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"sampling_{name}", pathlib.Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ref = _load("reference")
tiny = _load("tiny_checkpoints")

G, T, PAD = 4, 10, 0
STOPS = (2, 5, 11, 17, 23, 31, 40, 47)  # ~1/8 of the vocabulary: rows stop at varied steps
PLAIN = SamplerConfig(max_new_tokens=T, num_samples=G, stop_ids=STOPS, cache_dtype="float32")
FILTERED = SamplerConfig(max_new_tokens=T, num_samples=G, stop_ids=STOPS, cache_dtype="float32",
                         temperature=0.7, top_k=10, top_p=0.9, min_p=0.05)
GREEDY = SamplerConfig(max_new_tokens=T, num_samples=G, greedy=True, cache_dtype="float32")


@pytest.fixture(scope="module")
def model():
  return tiny.spiky_decoder()


@pytest.fixture(scope="module")
def prompts():
  """Two left-padded prompts of 3 and 7 tokens in an 8-wide batch."""
  ids = np.zeros((2, 8), np.int32)
  ids[0, 5:] = [1, 9, 14]
  ids[1, 1:] = [1, 30, 4, 7, 7, 60, 3]
  return ids, ids > 0


@pytest.fixture(scope="module")
def forward(model):
  """Jitted full-sequence logits of the same model: the reference for every rollout test."""
  graphdef, params = nnx.split(model)
  fn = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask))
  return lambda ids, mask: np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(mask)), np.float64)


def _full_sequences(prompts, rollouts):
  """[B*G, P+T] prompt + rollout ids and mask, rows in the sampler's order (b * G + g)."""
  ids, mask = prompts
  B, g, t = rollouts.tokens.shape
  tokens = np.asarray(rollouts.tokens).reshape(B * g, t)
  out_mask = np.asarray(rollouts.mask).reshape(B * g, t)
  return (np.concatenate([np.repeat(ids, g, 0), tokens], 1),
          np.concatenate([np.repeat(mask, g, 0), out_mask], 1), tokens, out_mask)


@pytest.fixture(scope="module")
def plain(model, prompts):
  return sample_model(model, *prompts, jax.random.key(0), PLAIN, pad_id=PAD)


@pytest.fixture(scope="module")
def filtered(model, prompts):
  return sample_model(model, *prompts, jax.random.key(1), FILTERED, pad_id=PAD)


def test_greedy_equals_stepwise_argmax_of_full_forward(model, prompts, forward):
  ids, mask = prompts
  out = sample_model(model, ids, mask, jax.random.key(0), GREEDY, pad_id=PAD)
  B, P = ids.shape
  # Reference: re-run the whole sequence each step and take the argmax of the last real position.
  # The buffer is full width from the start (one compile): causal attention never sees the
  # zero-filled future.
  buf = np.concatenate([np.repeat(ids, G, 0), np.zeros((B * G, T), np.int32)], 1)
  buf_mask = np.concatenate([np.repeat(mask, G, 0), np.zeros((B * G, T), bool)], 1)
  want_lp = np.zeros((B * G, T))
  for t in range(T):
    logits = forward(buf, buf_mask)[:, P + t - 1]
    buf[:, P + t] = logits.argmax(-1)
    buf_mask[:, P + t] = True
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want_lp[:, t] = logits.max(-1) - log_z
  np.testing.assert_array_equal(np.asarray(out.tokens).reshape(B * G, T), buf[:, P:])
  np.testing.assert_allclose(np.asarray(out.logprobs).reshape(B * G, T), want_lp, atol=1e-4)
  assert np.asarray(out.mask).all() and (np.asarray(out.lengths) == T).all()
  # Every sample of a prompt forks the same cache: greedy samples are identical.
  assert (np.asarray(out.tokens) == np.asarray(out.tokens)[:, :1]).all()


def test_logprobs_equal_full_forward_logprobs(prompts, forward, plain):
  full_ids, full_mask, tokens, out_mask = _full_sequences(prompts, plain)
  P = prompts[0].shape[1]
  logits = forward(full_ids, full_mask)[:, P - 1:-1]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  got = np.asarray(plain.logprobs).reshape(tokens.shape)
  np.testing.assert_allclose(got[out_mask], want[out_mask], atol=1e-4)


def test_filtered_logprobs_are_under_the_filtered_distribution(prompts, forward, filtered):
  full_ids, full_mask, tokens, out_mask = _full_sequences(prompts, filtered)
  P = prompts[0].shape[1]
  R, V = tokens.shape[0], 64
  logits = forward(full_ids, full_mask)[:, P - 1:-1].reshape(R * T, V)
  probs = ref.target_probs(logits, temperature=0.7, top_k=10, top_p=0.9, min_p=0.05)
  chosen = probs[np.arange(R * T), tokens.reshape(-1)].reshape(R, T)
  assert (chosen[out_mask] > 0).all(), "a token outside the filtered set was sampled"
  got = np.asarray(filtered.logprobs).reshape(R, T)
  np.testing.assert_allclose(got[out_mask], np.log(chosen[out_mask]), atol=1e-4)
  # The filters bite: some kept sets are strictly smaller than the vocabulary's top 10.
  assert ((probs > 0).sum(-1) < 10).any()


@pytest.mark.parametrize("which", ["plain", "filtered"])
def test_stop_handling_leaves_only_padding_after_the_stop_token(which, request):
  out = request.getfixturevalue(which)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  logprobs, lengths = np.asarray(out.logprobs), np.asarray(out.lengths)
  np.testing.assert_array_equal(lengths, mask.sum(-1))
  np.testing.assert_array_equal(mask, np.arange(T) < lengths[..., None])  # a prefix per row
  assert (tokens[~mask] == PAD).all() and (logprobs[~mask] == 0).all()
  is_stop = np.isin(tokens, STOPS) & mask
  for b, g in np.ndindex(lengths.shape):
    n = lengths[b, g]
    stops = np.flatnonzero(is_stop[b, g])
    # At most one stop token, and only as the last real token; rows without one ran to T.
    assert stops.size == 0 and n == T or stops.tolist() == [n - 1], (b, g, tokens[b, g])
  assert (lengths < T).any() and len(set(lengths.ravel().tolist())) > 2  # the test saw stops


def test_same_key_same_rollouts_other_key_other_rollouts(model, prompts, plain):
  again = sample_model(model, *prompts, jax.random.key(0), PLAIN, pad_id=PAD)
  np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(plain.tokens))
  np.testing.assert_array_equal(np.asarray(again.logprobs), np.asarray(plain.logprobs))
  other = sample_model(model, *prompts, jax.random.key(7), PLAIN, pad_id=PAD)
  assert not np.array_equal(np.asarray(other.tokens), np.asarray(plain.tokens))


def test_eight_device_mesh_gives_the_same_rollouts(model, prompts, plain):
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = sample_model(model, *prompts, jax.random.key(0), PLAIN, pad_id=PAD, mesh=mesh)
  assert len(sharded.tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(plain.tokens))
  np.testing.assert_array_equal(np.asarray(sharded.lengths), np.asarray(plain.lengths))
  np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(plain.logprobs), atol=1e-5)


def test_new_params_of_the_same_shapes_do_not_recompile(model, prompts, plain):
  graphdef, params = nnx.split(model)
  before = sampler_lib._rollout_jit._cache_size()  # pylint: disable=protected-access
  shifted = jax.tree.map(lambda x: x * 1.01, params)
  out = sample(graphdef, shifted, *prompts, jax.random.key(0), PLAIN, pad_id=PAD)
  assert sampler_lib._rollout_jit._cache_size() == before  # pylint: disable=protected-access
  assert out.tokens.shape == plain.tokens.shape


def test_shared_prefix_attention_equals_attention_over_the_concatenated_cache():
  rng = np.random.default_rng(0)
  B, g, P, S, N, K, H = 2, 3, 5, 4, 4, 2, 8
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  q, pk, pv = f(B * g, N, H), f(B, P, K, H), f(B, P, K, H)
  gk, gv = f(B * g, S, K, H), f(B * g, S, K, H)
  pmask = jnp.asarray([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
  valid = jnp.asarray([1, 1, 1, 0], bool)

  @jax.jit
  def both(q, pk, pv, pmask, gk, gv, valid):
    keys = jnp.concatenate([jnp.repeat(pk, g, 0), gk], 1)
    values = jnp.concatenate([jnp.repeat(pv, g, 0), gv], 1)
    mask = jnp.concatenate([jnp.repeat(pmask, g, 0), jnp.broadcast_to(valid, (B * g, S))], 1)
    return (shared_prefix_attend(q, pk, pv, pmask, gk, gv, valid),
            attend(q[:, None], keys, values, mask[:, None, :])[:, 0])

  got, want = both(q, pk, pv, pmask, gk, gv, valid)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_bad_prompts_are_rejected_before_compiling(model, prompts):
  ids, mask = prompts
  with pytest.raises(InputError, match="left-padded"):
    sample_model(model, ids, mask[:, ::-1], jax.random.key(0), PLAIN)
  with pytest.raises(InputError, match="max_position_embeddings"):
    sample_model(model, ids, mask, jax.random.key(0), SamplerConfig(max_new_tokens=40000))
  with pytest.raises(InputError, match="token ids"):
    sample_model(model, ids + 100, mask, jax.random.key(0), PLAIN)


def test_decode_phases_cover_the_cache_in_a_few_growing_blocks():
  assert sampler_lib.decode_phases(9) == [9]
  assert sampler_lib.decode_phases(255) == [96, 176, 255]
  assert sampler_lib.decode_phases(8191) == [2048, 4096, 6144, 8191]


def test_phased_decoding_equals_one_phase(model, prompts, plain, monkeypatch):
  """Phases that read 3, 6 and then all 9 decode slots give the one-phase rollouts."""
  monkeypatch.setattr(sampler_lib, "decode_phases", lambda num_slots: [3, 6, num_slots])
  rollout = jax.jit(sampler_lib._rollout,  # pylint: disable=protected-access
                    static_argnames=("graphdef", "cfg", "pad_id", "mesh", "rules"))
  graphdef, params = nnx.split(model)
  phased = rollout(graphdef, params, jnp.asarray(prompts[0]), jnp.asarray(prompts[1]),
                   jax.random.key(0), cfg=PLAIN, pad_id=PAD, mesh=None, rules=())
  np.testing.assert_array_equal(np.asarray(phased.tokens), np.asarray(plain.tokens))
  np.testing.assert_allclose(np.asarray(phased.logprobs), np.asarray(plain.logprobs), atol=1e-6)
  assert (np.asarray(plain.lengths) > 6).any()  # some rows reached the last phase


@pytest.mark.parametrize("every", [3, 4])
def test_stop_check_every_k_steps_gives_the_same_rollouts(model, prompts, plain, every):
  cfg = dataclasses.replace(PLAIN, stop_check_every=every)
  out = sample_model(model, *prompts, jax.random.key(0), cfg, pad_id=PAD)
  for name in ("tokens", "mask", "lengths"):
    np.testing.assert_array_equal(np.asarray(getattr(out, name)), np.asarray(getattr(plain, name)))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(plain.logprobs), atol=1e-6)
  with pytest.raises(InputError, match="sampler.stop_check_every"):
    dataclasses.replace(PLAIN, stop_check_every=0)
