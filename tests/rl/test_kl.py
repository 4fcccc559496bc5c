"""KL estimators vs hand values and a float64 NumPy reference; gradients; the aggregated KL loss."""


import jax
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rl import KLConfig, KLEstimator, agg_loss, kl_loss, kl_penalty, loss_normalizer

import testing_support.numpy_rl_reference as ref

kl_jit = jax.jit(kl_penalty, static_argnames="estimator")


def test_hand_values_and_clamps():
  logp = np.array([[-1.0, -31.0, 29.0]], np.float32)
  logp_ref = np.array([[-1.2, -1.0, -1.0]], np.float32)  # delta = 0.2, -30, +30
  np.testing.assert_allclose(kl_jit(logp, logp_ref, KLEstimator.K1), [[0.2, -30, 30]], rtol=1e-5)
  np.testing.assert_allclose(kl_jit(logp, logp_ref, "k2"), [[0.02, 450, 450]], rtol=1e-5)
  # k3 at delta 0.2: e^-0.2 + 0.2 - 1; at delta -30: x clamped to 20, e^20 - 21 clamped to 10;
  # at delta 30: x = -20, e^-20 + 19 clamped to 10.
  np.testing.assert_allclose(kl_jit(logp, logp_ref, "low_var_kl"),
                             [[np.exp(-0.2) + 0.2 - 1, 10, 10]], rtol=1e-5)


def test_aliases_and_bad_names():
  assert KLEstimator("k3") is KLEstimator.K3
  assert KLEstimator("kl") is KLEstimator.K1
  assert KLEstimator("mse") is KLEstimator.K2
  assert KLConfig(beta=0.001, estimator="k3").estimator is KLEstimator.K3
  with pytest.raises(InputError, match="kl.estimator.*'k4'"):
    KLConfig(estimator="k4")
  with pytest.raises(InputError, match="kl.beta"):
    KLConfig(beta=-1.0)


@pytest.mark.parametrize("estimator", [e.value for e in KLEstimator])
def test_random_values_and_grads_match_reference(estimator):
  rng = np.random.default_rng(0)
  logp_ref = -rng.gamma(2.0, 1.0, size=(4, 9)).astype(np.float32)
  logp = (logp_ref + rng.normal(scale=1.0, size=(4, 9))).astype(np.float32)
  np.testing.assert_allclose(kl_jit(logp, logp_ref, estimator), ref.kl(logp, logp_ref, estimator),
                             rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda lp: kl_penalty(lp, logp_ref, estimator).sum()))(logp)
  np.testing.assert_allclose(grad, ref.kl_grad(logp, logp_ref, estimator), rtol=1e-5, atol=1e-6)


def test_k3_keeps_float32_precision_for_small_differences():
  # e^x - x - 1 ~ x^2 / 2 ~ 5e-7 here; computed naively in float32 the cancellation error is ~1e-7.
  delta = np.linspace(1e-3, 1e-2, 16).astype(np.float32)[None]
  out = kl_jit(delta, np.zeros_like(delta), KLEstimator.K3)
  np.testing.assert_allclose(out, ref.kl(delta.astype(np.float64), 0.0, "k3"), rtol=1e-3)
  assert (np.asarray(out) >= 0).all()


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_kl_loss_is_beta_times_the_same_aggregation(mode):
  rng = np.random.default_rng(1)
  logp_ref = -rng.gamma(2.0, 1.0, size=(6, 5)).astype(np.float32)
  logp = (logp_ref + rng.normal(scale=0.5, size=(6, 5))).astype(np.float32)
  mask = rng.random((6, 5)) < 0.7
  config = KLConfig(beta=0.001)
  loss_fn = jax.jit(kl_loss, static_argnames=("config", "loss_agg_mode"))
  loss, metrics = loss_fn(logp, logp_ref, mask, config, mode)
  expected = ref.aggregate(ref.kl(logp, logp_ref, "low_var_kl"), mask, mode)
  np.testing.assert_allclose(metrics["kl_loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.001 * expected, rtol=1e-5)
  # Micro-batches with the mini-batch normalizer add up to the full loss, as for the policy loss.
  n = loss_normalizer(mask, mode)
  parts = [loss_fn(logp[k : k + 3], logp_ref[k : k + 3], mask[k : k + 3], config, mode, n)[0]
           for k in (0, 3)]
  np.testing.assert_allclose(sum(parts), loss, rtol=1e-5)
  np.testing.assert_allclose(
      agg_loss(kl_penalty(logp, logp_ref), mask, mode), metrics["kl_loss"], rtol=1e-6)


def test_padding_with_infinities_stays_finite():
  logp = np.array([[-1.0, -np.inf]], np.float32)
  logp_ref = np.array([[-1.5, -np.inf]], np.float32)
  mask = np.array([[True, False]])
  loss, grad = jax.jit(jax.value_and_grad(
      lambda lp: kl_loss(lp, logp_ref, mask, KLConfig(beta=1.0))[0]))(logp)
  np.testing.assert_allclose(loss, np.exp(-0.5) + 0.5 - 1, rtol=1e-5)  # delta = 0.5
  np.testing.assert_allclose(grad, [[1 - np.exp(-0.5), 0.0]], rtol=1e-5)
