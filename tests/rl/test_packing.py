"""Tests the bucketed / packed update layouts (rl/packing.py, packed_forward.py, reference.py):
the same loss, gradients and metrics as the padded step, and a packing plan that places every
real token exactly once. Tolerances: float32, rtol 1e-5 on losses and metrics, atol 2e-6 on
gradients of O(1e-2) (only the summation order differs between layouts)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import testing_support.numpy_rl_reference as ref
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.rl import KLConfig, PolicyLossConfig
from darling_jax.rl.darling_reward import RewardConfig, darling_advantages
from darling_jax.rl.packing import BatchPacker, plan_layout
from darling_jax.rl.reference import make_reference_logprobs
from darling_jax.rl.state import TrainState, UpdateBatch
from darling_jax.rl.update import UpdateConfig, make_update_step, policy_logprobs
from darling_jax.sharding import DEFAULT_RULES, MeshConfig, make_mesh, state_shardings

B, G, P, N = 4, 4, 8, 6
TAU = 0.5
BUCKETS = (8, 12, 16, 24)  # sequences are 2..11 tokens: T = 12 (< P + N), some rows hold two
RTOL, ATOL_GRAD = 1e-5, 2e-6


def _model():
  return Decoder(DecoderConfig.tiny(Family.QWEN3, vocab_size=64), rngs=nnx.Rngs(0))


def _batch(seed=0, with_ref=False):
  rng = np.random.default_rng(seed)
  prompt_lens = np.array([5, 3, 1, 4])  # left padding of every width, a one-token prompt
  prompt_mask = np.arange(P)[None] >= (P - prompt_lens)[:, None]
  lengths = rng.integers(1, N + 1, (B, G))
  lengths[2, 3] = 0  # an empty response: never placed, counted nowhere
  lengths[0, 0] = N  # a full-length one: the longest sequence is P + N = 11 tokens
  response_mask = np.arange(N)[None, None] < lengths[..., None]
  probs = rng.uniform(size=(B, G, G)).astype(np.float32)
  batch = dict(
      prompt_ids=rng.integers(3, 64, (B, P)).astype(np.int32) * prompt_mask,
      prompt_mask=prompt_mask,
      response_ids=rng.integers(3, 64, (B, G, N)).astype(np.int32),
      response_mask=response_mask,
      old_logprobs=(-3.5 - rng.uniform(size=(B, G, N))).astype(np.float32),
      quality=rng.integers(0, 2, (B, G)).astype(np.float32),
      equiv_probs=(probs + probs.transpose(0, 2, 1)) / 2,
  )
  if with_ref:
    batch["ref_logprobs"] = (-3.5 - rng.uniform(size=(B, G, N))).astype(np.float32)
  return UpdateBatch(**{k: jnp.asarray(v) for k, v in batch.items()})


def _config(layout, **kw):
  kw = {"length_buckets": BUCKETS, "reward": RewardConfig(threshold=TAU), **kw}
  return UpdateConfig(layout=layout, **kw)


def _sgd_step(config, batch, mesh=None):
  """One update with SGD(lr=1), so old - new params are the gradients."""
  graphdef, params = nnx.split(_model())
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optax.sgd(1.0).init(params),
                     rng=jax.random.key(0))
  if mesh is not None:
    psh = state_shardings(params, mesh, DEFAULT_RULES)
    state = jax.device_put(state, TrainState(step=None, params=psh, opt_state=None, rng=None))
  packed, facts = BatchPacker(config, mesh, max_positions=64)(batch)
  old = jax.tree.map(np.asarray, params)
  new_state, metrics = jax.jit(make_update_step(graphdef, optax.sgd(1.0), config, mesh=mesh),
                               donate_argnums=0)(state, packed)
  grads = jax.tree.map(lambda o, n: o - np.asarray(n), old, new_state.params)
  return graphdef, params, grads, jax.tree.map(np.asarray, metrics), facts


def _assert_same(got, want, what):
  (_, _, g_grads, g_metrics, _), (_, _, w_grads, w_metrics, _) = got, want
  assert set(g_metrics) == set(w_metrics)
  for k in w_metrics:
    np.testing.assert_allclose(g_metrics[k], w_metrics[k], rtol=RTOL, atol=1e-6,
                               err_msg=f"{what}: {k}")
  for a, b in zip(jax.tree.leaves(g_grads), jax.tree.leaves(w_grads)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL_GRAD, err_msg=what)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_layouts_match_padded_and_numpy(mode):
  batch = _batch()
  loss = PolicyLossConfig(loss_agg_mode=mode)
  padded = _sgd_step(_config("padded", policy_loss=loss), batch)
  bucketed = _sgd_step(_config("bucketed", policy_loss=loss, micro_batch_prompts=2), batch)
  packed = _sgd_step(_config("packed", policy_loss=loss, max_tokens_per_micro_batch=32), batch)
  assert bucketed[4]["row_len"] == 12 and bucketed[4]["micro_batches"] == 2
  assert packed[4]["rows_per_micro_batch"] == 2 and packed[4]["micro_batches"] > 1
  _assert_same(bucketed, padded, "bucketed")
  _assert_same(packed, padded, "packed")
  # ... and all of them the NumPy loss of the padded log-probs
  graphdef, params = padded[0], padded[1]
  flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
  logp, _ = policy_logprobs(graphdef, params, jnp.repeat(batch.prompt_ids, G, 0),
                            jnp.repeat(batch.prompt_mask, G, 0), flat(batch.response_ids),
                            flat(batch.response_mask))
  q = np.asarray(batch.quality, np.float64)
  rewards = np.stack([ref.fuse(q[b], ref.diversity(ref.union_find(
      np.asarray(batch.equiv_probs[b]) > TAU), 0.1), "multiplicative") for b in range(B)])
  adv = np.broadcast_to(ref.advantages(rewards, "none", 1e-6).reshape(B * G, 1), (B * G, N))
  token_loss = ref.ppo_token_loss(np.asarray(logp, np.float64),
                                  np.asarray(flat(batch.old_logprobs), np.float64), adv,
                                  0.2, 0.2, 3.0)
  want = ref.aggregate(token_loss, np.asarray(flat(batch.response_mask)), mode)
  for got in (padded, bucketed, packed):
    np.testing.assert_allclose(got[3]["pg_loss"], want, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_eight_device_mesh_with_mini_batches_and_kl(mode):
  batch = _batch(3, with_ref=True)
  common = dict(mini_batches=2, kl=KLConfig(beta=0.1),
                policy_loss=PolicyLossConfig(loss_agg_mode=mode))
  single = _sgd_step(_config("padded", **common), batch)
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  # bucketed: 2 prompts x 4 answers = 8 rows (two per device); packed: 8 rows of 12 tokens
  for layout, extra in (("bucketed", {}), ("packed", {"max_tokens_per_micro_batch": 128})):
    sharded = _sgd_step(_config(layout, **common, **extra), batch, mesh=mesh)
    assert sharded[4]["rows_per_micro_batch"] % 4 == 0
    assert "kl" in sharded[3]
    _assert_same(sharded, single, f"{layout} on 8 devices")


def test_reference_logprobs_match_padded_single_call():
  batch = _batch(4)
  graphdef, params = nnx.split(_model())
  flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
  want, _ = policy_logprobs(graphdef, params, jnp.repeat(batch.prompt_ids, G, 0),
                            jnp.repeat(batch.prompt_mask, G, 0), flat(batch.response_ids),
                            flat(batch.response_mask), with_entropy=False)
  mask = np.asarray(batch.response_mask)
  want = np.where(mask, np.asarray(want).reshape(B, G, N), 0.0)
  for cfg in (_config("padded", mini_batches=2, micro_batch_prompts=1), _config("bucketed"),
              _config("packed", max_tokens_per_micro_batch=32)):
    packed, _ = BatchPacker(cfg)(batch)
    got = make_reference_logprobs(graphdef, cfg)(params, packed)
    assert got.shape == (B, G, N)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-5,
                               err_msg=cfg.layout.value)


def _check_plan(plan, lp, lr, M, nd, Pn, Nn, budget):
  Mp, U, R, T = plan.shape
  assert Mp == M and R % nd == 0 and (not budget or R * T <= budget)
  Gn = lr.shape[1]
  tgt = plan.tgt[plan.tgt >= 0]
  # every real response token is predicted by exactly one column
  s, t = np.divmod(np.sort(tgt), Nn)
  want_s = np.repeat(np.arange(lr.size), lr.reshape(-1))
  want_t = np.concatenate([np.arange(n) for n in lr.reshape(-1)] + [np.zeros(0, int)])
  np.testing.assert_array_equal(s, want_s)
  np.testing.assert_array_equal(t, want_t)
  # every real token of a placed sequence sits in exactly one column, in order, positions 0..L-1
  src = plan.src[plan.src >= 0]
  assert len(np.unique(src)) == len(src) == int(((lp[:, None] + lr) * (lr > 0)).sum())
  # groups stay in their mini-batch: sequence b * G + g in mini-batch b % M
  for m in range(M):
    for arr, width in ((plan.tgt[m], Nn), (plan.src[m], Pn + Nn)):
      seqs = arr[arr >= 0] // width
      assert np.all((seqs // Gn) % M == m)
  # within a segment: one sequence, consecutive positions from 0, and its own segment id
  seg, pos, srcs = plan.seg.reshape(-1, T), plan.pos.reshape(-1, T), plan.src.reshape(-1, T)
  for r in range(seg.shape[0]):
    for k in np.unique(seg[r][seg[r] > 0]):
      cols = np.flatnonzero(seg[r] == k)
      np.testing.assert_array_equal(pos[r, cols], np.arange(len(cols)))
      assert len(np.unique(srcs[r, cols] // (Pn + Nn))) == 1
      assert np.all(np.diff(cols) == 1)
    assert np.all(srcs[r][seg[r] == 0] == -1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([0, 256, 512]), st.integers(0, 2**31 - 1))
def test_packing_plan_places_every_token_once(M, per_mb, nd, budget, seed):
  rng = np.random.default_rng(seed)
  Bn, Gn, Pn, Nn = M * per_mb, int(rng.integers(1, 5)), int(rng.integers(1, 9)), 40
  lp = rng.integers(1, Pn + 1, Bn)
  lr = np.minimum(rng.geometric(0.1, (Bn, Gn)) - 1, Nn)
  for layout in ("packed", "bucketed"):
    cfg = UpdateConfig(layout=layout, mini_batches=M, length_buckets=(16, 32, 64),
                       max_tokens_per_micro_batch=budget)
    if layout == "packed" and budget and budget < nd * 64:
      continue  # rows might not fit: the error is tested on its own
    plan = plan_layout(lp, lr, Pn, Nn, cfg, num_devices=nd)
    _check_plan(plan, lp, lr, M, nd, Pn, Nn, budget if layout == "packed" else 0)


def test_bad_input_is_one_clear_error_before_compiling():
  batch = _batch()
  lp, lr = np.full(B, 5), np.asarray(batch.response_mask).sum(-1)
  with pytest.raises(InputError, match="update.length_buckets"):
    plan_layout(lp, lr, P, N, _config("packed", length_buckets=(8,)))
  with pytest.raises(InputError, match="policy.max_position_embeddings"):
    plan_layout(lp, lr, P, N, _config("packed"), max_positions=10)
  with pytest.raises(InputError, match="update.max_tokens_per_micro_batch"):
    plan_layout(lp, lr, P, N, _config("packed", max_tokens_per_micro_batch=10))
  with pytest.raises(InputError, match="update.max_tokens_per_micro_batch"):  # 8 devices x 12
    plan_layout(lp, lr, P, N, _config("packed", max_tokens_per_micro_batch=64), num_devices=8)
  with pytest.raises(InputError, match="prompt_mask"):
    plan_layout(np.zeros(B, int), lr, P, N, _config("packed"))
  with pytest.raises(InputError, match="response_mask"):  # a hole inside a response
    BatchPacker(_config("bucketed"))(batch.replace(
        response_mask=batch.response_mask.at[0, 0, 1].set(False)))
  with pytest.raises(InputError, match="update.layout"):
    UpdateConfig(layout="ragged")
  # traced, never compiled: a packed config given a raw batch, and padded micro-batches of 4
  # sequences on 8 devices (which used to fall back to replication silently)
  graphdef, params = nnx.split(_model())
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optax.sgd(1.0).init(params),
                     rng=jax.random.key(0))
  step = make_update_step(graphdef, optax.sgd(1.0), _config("packed"))
  with pytest.raises(InputError, match="update.layout"):
    jax.eval_shape(step, state, batch)
  mesh = make_mesh(MeshConfig(data=8))
  step = make_update_step(graphdef, optax.sgd(1.0), _config("padded", micro_batch_prompts=1),
                          mesh=mesh)
  with pytest.raises(InputError, match="update.micro_batch_prompts"):
    jax.eval_shape(step, state, batch)
