"""PPO clipped surrogate and aggregation vs hand values, a float64 NumPy reference, gradients, and
exact micro-batch accumulation."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rl import LossAggMode, PolicyLossConfig, clipped_policy_loss, loss_normalizer

import testing_support.numpy_rl_reference as ref

loss_jit = jax.jit(clipped_policy_loss, static_argnames="config")
MODES = [m.value for m in LossAggMode]

# Two sequences, three tokens: A = +1 with rho (1, 1.5, 0.5); A = -1 with rho (0.5, 1.5, 4).
HAND_RHO = np.array([[1.0, 1.5, 0.5], [0.5, 1.5, 4.0]])
HAND_NEW = np.log(HAND_RHO).astype(np.float32)
HAND_OLD = np.zeros((2, 3), np.float32)
HAND_ADV = np.array([1.0, -1.0], np.float32)
# Per-token losses: A>0: -rho, -min(rho, 1.2), -max(rho, 0.8); A<0: max(rho, clip) capped at c = 3.
HAND_LOSS = np.array([[-1.0, -1.2, -0.5], [0.8, 1.5, 3.0]])


def test_hand_case_token_losses_and_metrics():
  full = np.ones((2, 3), bool)
  loss, metrics = loss_jit(HAND_NEW, HAND_OLD, HAND_ADV, full, PolicyLossConfig())
  np.testing.assert_allclose(loss, HAND_LOSS.mean(), rtol=1e-6)  # 2.6 / 6
  np.testing.assert_allclose(metrics["pg_clipfrac"], 2 / 6, rtol=1e-6)  # rho 1.5 (A>0), 0.5 (A<0)
  np.testing.assert_allclose(metrics["pg_clipfrac_high"], 1 / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics["pg_clipfrac_low"], 1 / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics["pg_clipfrac_dual"], 1 / 6, rtol=1e-6)  # rho 4, A < 0
  np.testing.assert_allclose(metrics["ratio_mean"], HAND_RHO.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["ppo_kl"], -np.log(HAND_RHO).mean(), rtol=1e-5)
  assert float(metrics["num_tokens"]) == 6
  no_dual, _ = loss_jit(HAND_NEW, HAND_OLD, HAND_ADV, full, PolicyLossConfig(dual_clip_c=None))
  np.testing.assert_allclose(no_dual, 3.6 / 6, rtol=1e-6)  # the last token costs 4, not 3


def test_hand_case_aggregation_modes():
  mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
  expected = {
      "token-mean": (-2.7 + 2.3) / 5,
      "seq-mean-token-mean": (-2.7 / 3 + 2.3 / 2) / 2,
      "seq-mean-token-sum": (-2.7 + 2.3) / 2,
      "seq-mean-token-sum-norm": (-2.7 / 3 + 2.3 / 3) / 2,
  }
  configs = {mode: PolicyLossConfig(loss_agg_mode=mode) for mode in expected}
  configs["norm10"] = PolicyLossConfig(loss_agg_mode="seq-mean-token-sum-norm",
                                       loss_scale_factor=10)
  expected["norm10"] = (-2.7 / 10 + 2.3 / 10) / 2
  # One program for every mode keeps the compile count (and the test time) down.
  losses = jax.jit(lambda mask: {
      name: clipped_policy_loss(HAND_NEW, HAND_OLD, HAND_ADV, mask, cfg)[0]
      for name, cfg in configs.items()})(mask)
  for name, value in expected.items():
    np.testing.assert_allclose(losses[name], value, rtol=1e-6, err_msg=name)


def _random_batch(rng, shape=(3, 4, 7)):
  logp_old = -rng.gamma(2.0, 1.0, size=shape)
  logp_new = logp_old + rng.normal(scale=0.8, size=shape)  # rho spans all clip regions
  adv = rng.normal(size=shape[:-1])
  mask = rng.random(shape) < 0.8
  mask[0, 0] = False  # one fully masked sequence
  return logp_new.astype(np.float32), logp_old.astype(np.float32), adv.astype(np.float32), mask


def _agg_weights(mask, mode):
  """d(aggregate)/d(token loss): the aggregate is linear in the losses, so apply it to units."""
  w = np.zeros(mask.shape)
  for idx in np.ndindex(mask.shape):
    unit = np.zeros(mask.shape)
    unit[idx] = 1.0
    w[idx] = ref.aggregate(unit, mask, mode)
  return w


def test_random_loss_and_grad_match_reference():
  rng = np.random.default_rng(0)
  logp_new, logp_old, adv, mask = _random_batch(rng)
  adv_tokens = np.broadcast_to(adv[..., None], logp_new.shape)
  duals = {"dual": 3.0, "no-dual": None}  # string keys: pytree dict keys must sort
  configs = {(mode, d): PolicyLossConfig(0.2, 0.28, duals[d], mode)
             for mode in MODES for d in duals}
  # Every configuration in one program: one compile instead of eight.
  results = jax.jit(lambda lp: {
      key: jax.value_and_grad(
          lambda x: clipped_policy_loss(x, logp_old, adv, mask, cfg), has_aux=True)(lp)
      for key, cfg in configs.items()})(logp_new)
  for (mode, d), ((loss, metrics), grad) in results.items():
    dual, what = duals[d], f"{mode}, {d}"
    token_loss = ref.ppo_token_loss(logp_new, logp_old, adv_tokens, 0.2, 0.28, dual)
    np.testing.assert_allclose(loss, ref.aggregate(token_loss, mask, mode), rtol=1e-5, atol=1e-6,
                               err_msg=what)
    assert 0 < float(metrics["pg_clipfrac_low"]) and 0 < float(metrics["pg_clipfrac_high"]), what
    assert (float(metrics["pg_clipfrac_dual"]) > 0) == (dual is not None), what
    token_grad = ref.ppo_token_grad(logp_new, logp_old, adv_tokens, 0.2, 0.28, dual)
    np.testing.assert_allclose(grad, token_grad * _agg_weights(mask, mode), rtol=1e-5, atol=1e-7,
                               err_msg=what)


def test_reference_gradient_against_finite_differences():
  """The analytic reference gradient itself, checked by central differences in float64."""
  rng = np.random.default_rng(1)
  logp_new, logp_old, adv, _ = _random_batch(rng, (2, 6))
  lp = logp_new.astype(np.float64)
  adv_tokens = np.broadcast_to(adv[:, None], lp.shape)
  analytic = ref.ppo_token_grad(lp, logp_old, adv_tokens, 0.2, 0.2, 3.0)
  h = 1e-6
  for idx in np.ndindex(lp.shape):
    up, down = lp.copy(), lp.copy()
    up[idx] += h
    down[idx] -= h
    fd = (ref.ppo_token_loss(up, logp_old, adv_tokens, 0.2, 0.2, 3.0)[idx]
          - ref.ppo_token_loss(down, logp_old, adv_tokens, 0.2, 0.2, 3.0)[idx]) / (2 * h)
    np.testing.assert_allclose(analytic[idx], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_sum_to_the_mini_batch(mode):
  """With the mini-batch normalizer, micro-batch losses and gradients add up exactly."""
  rng = np.random.default_rng(2)
  s, t = 8, 6
  base = -rng.gamma(2.0, 1.0, size=(s, t)).astype(np.float32)
  feats = rng.normal(size=(s, t)).astype(np.float32)
  logp_old = base + rng.normal(scale=0.3, size=(s, t)).astype(np.float32)
  adv = rng.normal(size=(s,)).astype(np.float32)
  mask = rng.random((s, t)) < np.linspace(0.3, 1.0, s)[:, None]  # micro-batches differ in tokens
  mask[1] = False
  theta = jnp.asarray(rng.normal(scale=0.3, size=(t,)).astype(np.float32))
  config = PolicyLossConfig(loss_agg_mode=mode)

  @jax.jit
  @jax.value_and_grad
  def loss_fn(theta, base, feats, logp_old, adv, mask, normalizer):
    logp_new = base + feats * theta[None, :]  # theta is shared by every sequence
    return clipped_policy_loss(logp_new, logp_old, adv, mask, config, normalizer)[0]

  data = (base, feats, logp_old, adv, mask)
  full_loss, full_grad = loss_fn(theta, *data, loss_normalizer(mask, mode))
  n = loss_normalizer(mask, mode)
  micro = [[x[k : k + 2] for x in data] for k in range(0, s, 2)]
  parts = [loss_fn(theta, *batch, n) for batch in micro]
  np.testing.assert_allclose(sum(p[0] for p in parts), full_loss, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(sum(p[1] for p in parts), full_grad, rtol=1e-5, atol=1e-7)
  if mode in ("token-mean", "seq-mean-token-mean"):
    # Each micro-batch normalising by its own count would NOT give the mini-batch loss.
    local = sum(loss_fn(theta, *batch, loss_normalizer(batch[-1], mode))[0] for batch in micro)
    assert abs(float(local) - float(full_loss)) > 1e-3


def test_padding_with_infinities_stays_finite():
  logp_new, logp_old, adv, mask = _random_batch(np.random.default_rng(3), (2, 5))
  logp_new = np.where(mask, logp_new, -np.inf).astype(np.float32)
  logp_old = np.where(mask, logp_old, -np.inf).astype(np.float32)
  loss, grad = jax.jit(jax.value_and_grad(
      lambda lp: clipped_policy_loss(lp, logp_old, adv, mask)[0]))(jnp.asarray(logp_new))
  assert np.isfinite(loss) and np.isfinite(grad).all()
  np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


def test_per_token_advantages_equal_broadcast_ones():
  logp_new, logp_old, adv, mask = _random_batch(np.random.default_rng(4), (3, 5))
  seq, _ = loss_jit(logp_new, logp_old, adv, mask, PolicyLossConfig())
  tok, _ = loss_jit(logp_new, logp_old, np.repeat(adv[:, None], 5, 1), mask, PolicyLossConfig())
  np.testing.assert_allclose(seq, tok, rtol=1e-6)


def test_config_validation():
  with pytest.raises(InputError, match="loss_agg_mode.*'mean'"):
    PolicyLossConfig(loss_agg_mode="mean")
  with pytest.raises(InputError, match="dual_clip_c"):
    PolicyLossConfig(dual_clip_c=1.0)
  with pytest.raises(InputError, match="epsilon"):
    PolicyLossConfig(epsilon=1.5)
  assert PolicyLossConfig(loss_agg_mode="seq-mean-token-mean").loss_agg_mode is (
      LossAggMode.SEQ_MEAN_TOKEN_MEAN)
