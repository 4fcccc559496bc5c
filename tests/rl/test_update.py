"""Tests `darling_jax/rl/update.py`: the compiled DARLING update against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import testing_support.numpy_rl_reference as ref
from flax import nnx

from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.rl import KLConfig, PolicyLossConfig
from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.lora import LoraConfig, init_lora, merge_lora
from darling_jax.rl.state import TrainState, UpdateBatch
from darling_jax.rl.update import UpdateConfig, jit_update_step, make_update_step, policy_logprobs
from darling_jax.sharding import DEFAULT_RULES, MeshConfig, make_mesh, state_shardings

B, G, P, N = 4, 4, 5, 6
TAU = 0.5


def _model():
  return Decoder(DecoderConfig.tiny(Family.QWEN3, vocab_size=64), rngs=nnx.Rngs(0))


def _batch(seed=0, with_ref=False, model=None):
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((B, P), bool)
  prompt_mask[1, :2] = False  # left padding
  lengths = rng.integers(1, N + 1, (B, G))
  response_mask = np.arange(N)[None, None] < lengths[..., None]
  probs = rng.uniform(size=(B, G, G)).astype(np.float32)
  probs = (probs + probs.transpose(0, 2, 1)) / 2
  batch = dict(
      prompt_ids=rng.integers(3, 64, (B, P)).astype(np.int32) * prompt_mask,
      prompt_mask=prompt_mask,
      response_ids=rng.integers(3, 64, (B, G, N)).astype(np.int32),
      response_mask=response_mask,
      old_logprobs=(-2.0 - rng.uniform(size=(B, G, N))).astype(np.float32),
      quality=rng.integers(0, 2, (B, G)).astype(np.float32),
      equiv_probs=probs,
  )
  if with_ref:
    batch["ref_logprobs"] = (-2.0 - rng.uniform(size=(B, G, N))).astype(np.float32)
  return UpdateBatch(**{k: jnp.asarray(v) for k, v in batch.items()})


def _logp(graphdef, params, batch):
  flat = lambda x: x.reshape(B * G, *x.shape[2:])  # noqa: E731
  logp, _ = policy_logprobs(graphdef, params, jnp.repeat(batch.prompt_ids, G, 0),
                            jnp.repeat(batch.prompt_mask, G, 0), flat(batch.response_ids),
                            flat(batch.response_mask))
  return logp


def _numpy_advantages(batch):
  probs = np.asarray(batch.equiv_probs, np.float64)
  q = np.asarray(batch.quality, np.float64)
  rewards = np.stack([ref.fuse(q[b], ref.diversity(ref.union_find(probs[b] > TAU), 0.1),
                               "multiplicative") for b in range(B)])
  return ref.advantages(rewards, "none", 1e-6)


def _sgd_step(config, batch, model=None, mesh=None):
  """One update with plain SGD(lr=1): new = old - grad, so grads can be read back exactly."""
  model = model or _model()
  graphdef, params = nnx.split(model)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optax.sgd(1.0).init(params),
                     rng=jax.random.key(0))
  step = make_update_step(graphdef, optax.sgd(1.0), config, mesh=mesh)
  if mesh is None:
    fn = jit_update_step(step)
  else:
    psh = state_shardings(params, mesh, DEFAULT_RULES)
    state = jax.device_put(state, TrainState(step=None, params=psh, opt_state=None, rng=None))
    fn = jax.jit(step, donate_argnums=0)
  old = jax.tree.map(np.asarray, params)
  new_state, metrics = fn(state, batch)
  grads = jax.tree.map(lambda o, n: o - np.asarray(n), old, new_state.params)
  return graphdef, params, grads, jax.tree.map(np.asarray, metrics), new_state


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_loss_and_gradients_match_numpy_reference(mode):
  config = UpdateConfig(policy_loss=PolicyLossConfig(loss_agg_mode=mode),
                        reward=RewardConfig(threshold=TAU))
  batch = _batch()
  graphdef, params, grads, metrics, _ = _sgd_step(config, batch)
  logp = np.asarray(_logp(graphdef, params, batch), np.float64)
  old = np.asarray(batch.old_logprobs, np.float64).reshape(B * G, N)
  mask = np.asarray(batch.response_mask).reshape(B * G, N)
  adv_tok = np.broadcast_to(_numpy_advantages(batch).reshape(B * G, 1), (B * G, N))
  token_loss = ref.ppo_token_loss(logp, old, adv_tok, 0.2, 0.2, 3.0)
  np.testing.assert_allclose(metrics["pg_loss"], ref.aggregate(token_loss, mask, mode), rtol=1e-5,
                             atol=1e-7)
  # dL/dlogp from the NumPy reference, pulled back through the model: the parameter gradient.
  cot = ref.ppo_token_grad(logp, old, adv_tok, 0.2, 0.2, 3.0) * mask
  match mode:
    case "token-mean":
      cot = cot / mask.sum()
    case "seq-mean-token-mean":
      cot = cot / np.maximum(mask.sum(-1, keepdims=True), 1) / mask.any(-1).sum()
    case "seq-mean-token-sum-norm":
      cot = cot / N / mask.any(-1).sum()
  _, vjp = jax.vjp(lambda p: _logp(graphdef, p, batch), params)
  (want,) = vjp(jnp.asarray(cot, jnp.float32))
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, np.asarray(w), atol=2e-6, rtol=1e-4)


def test_micro_batches_accumulate_exactly():
  batch = _batch(1)
  whole = _sgd_step(UpdateConfig(reward=RewardConfig(threshold=TAU)), batch)
  micro = _sgd_step(UpdateConfig(micro_batch_prompts=1, reward=RewardConfig(threshold=TAU)), batch)
  np.testing.assert_allclose(micro[3]["pg_loss"], whole[3]["pg_loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(whole[2]), jax.tree.leaves(micro[2])):
    np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5)


def test_mini_batches_are_sequential_updates_on_strided_prompts():
  batch = _batch(2)
  cfg = UpdateConfig(reward=RewardConfig(threshold=TAU))
  two = _sgd_step(UpdateConfig(mini_batches=2, reward=RewardConfig(threshold=TAU)), batch)
  # by hand: advantages from the whole batch, then prompts {0, 2} and then {1, 3}
  from darling_jax.rl.darling_reward import darling_advantages

  adv, _ = darling_advantages(batch.quality, cfg.reward, batch.equiv_probs)
  model = _model()
  graphdef, params = nnx.split(model)
  step = jax.jit(make_update_step(graphdef, optax.sgd(1.0), UpdateConfig(
      reward=RewardConfig(fusion=__import__("darling_jax.rl", fromlist=["FusionConfig"]).FusionConfig(
          mode="quality_only")))))
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optax.sgd(1.0).init(params),
                     rng=jax.random.key(0))
  for rows in ([0, 2], [1, 3]):
    sub = jax.tree.map(lambda x: x[jnp.array(rows)], batch)
    # quality-only fusion with q := A + c reproduces the advantages A after mean-centring
    sub = sub.replace(quality=adv[jnp.array(rows)], equiv_probs=None)
    state, _ = step(state, sub)
  for a, b in zip(jax.tree.leaves(two[4].params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_one_device_equals_eight_device_mesh():
  batch = _batch(3, with_ref=True)
  cfg = UpdateConfig(micro_batch_prompts=2, kl=KLConfig(beta=0.01),
                     reward=RewardConfig(threshold=TAU))
  single = _sgd_step(cfg, batch)
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  sharded = _sgd_step(cfg, batch, mesh=mesh)
  q = sharded[4].params["layers"]["q"][...]
  assert q.sharding.spec[1:3] == ("fsdp", "tensor")  # it really ran sharded
  for k in single[3]:
    np.testing.assert_allclose(sharded[3][k], single[3][k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(single[2]), jax.tree.leaves(sharded[2])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_kl_term_matches_numpy_k3():
  batch = _batch(4, with_ref=True)
  cfg = UpdateConfig(kl=KLConfig(beta=0.5), reward=RewardConfig(threshold=TAU))
  graphdef, params, _, metrics, _ = _sgd_step(cfg, batch)
  logp = np.asarray(_logp(graphdef, params, batch), np.float64)
  mask = np.asarray(batch.response_mask).reshape(B * G, N)
  k3 = ref.kl(logp, np.asarray(batch.ref_logprobs, np.float64).reshape(B * G, N), "k3")
  np.testing.assert_allclose(metrics["kl"], ref.aggregate(k3, mask, "token-mean"), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], metrics["pg_loss"] + 0.5 * metrics["kl"], rtol=1e-6)


def test_non_finite_batch_leaves_params_untouched():
  batch = _batch(5)
  bad = batch.replace(old_logprobs=batch.old_logprobs.at[0, 0, 0].set(jnp.nan))
  _, _, grads, metrics, _ = _sgd_step(UpdateConfig(reward=RewardConfig(threshold=TAU)), bad)
  assert metrics["nonfinite"] == 1.0
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_lora_starts_at_base_and_trains_only_adapters():
  model = _model()
  graphdef, base = nnx.split(model)
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "o", "down"))
  lora = init_lora(base, lcfg, jax.random.key(1))
  merged = merge_lora(base, lora, lcfg)
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # B = 0 at init
  cfg = UpdateConfig(lora=lcfg, reward=RewardConfig(threshold=TAU))
  tx = optax.sgd(1.0)
  state = TrainState(step=jnp.int32(0), params=lora, opt_state=tx.init(lora),
                     rng=jax.random.key(0))
  new, metrics = jax.jit(make_update_step(graphdef, tx, cfg))(state, _batch(6), base)
  assert metrics["grad_norm"] > 0
  assert np.abs(np.asarray(new.params["q"]["b"])).max() > 0  # adapters moved
  assert set(new.params) == {"q", "o", "down"}
