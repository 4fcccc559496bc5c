"""Reward fusion: hand-computed cases and float64 NumPy reference on random groups."""


import jax
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rl import Fusion, FusionConfig, fuse

import testing_support.numpy_rl_reference as ref

fuse_jit = jax.jit(fuse, static_argnames="config")

Q = np.array([[1.0, 0.0, 1.0, 1.0]], np.float32)
DIV = np.array([[2 / 3, 2 / 3, 1.0, 1.0]], np.float32)


def test_multiplicative_additive_quality_only():
  np.testing.assert_allclose(fuse_jit(Q, DIV, FusionConfig()), [[2 / 3, 0, 1, 1]], rtol=1e-6)
  additive = FusionConfig(Fusion.ADDITIVE, quality_weight=2.0, diversity_weight=0.5)
  np.testing.assert_allclose(fuse_jit(Q, DIV, additive), [[2 + 1 / 3, 1 / 3, 2.5, 2.5]], rtol=1e-6)
  np.testing.assert_array_equal(fuse_jit(Q, DIV, FusionConfig("quality_only")), Q)


def test_zscore_additive():
  # q: mean 3/4, population std sqrt(3)/4; div: mean 5/6, std 1/6.
  q_hat = (Q[0] - 0.75) / (np.sqrt(3) / 4)
  div_hat = np.array([-1.0, -1.0, 1.0, 1.0])
  out = fuse_jit(Q, DIV, FusionConfig(Fusion.ZSCORE_ADDITIVE))
  np.testing.assert_allclose(out, [q_hat + div_hat], rtol=1e-5)


def test_zscore_of_constant_group_is_exactly_zero():
  q = np.full((1, 8), 0.7, np.float32)  # float32 mean of 0.7s is not exactly 0.7 done naively
  div = np.full((1, 8), 0.1, np.float32)
  out = fuse_jit(q, div, FusionConfig(Fusion.ZSCORE_ADDITIVE))
  np.testing.assert_array_equal(out, np.zeros((1, 8)))


def test_shift_by_group_min_for_negative_quality():
  q = np.array([[-2.0, -1.0, 0.0, 1.0]], np.float32)
  div = np.array([[1.0, 0.5, 1.0, 0.1]], np.float32)
  np.testing.assert_allclose(fuse_jit(q, div, FusionConfig()), [[-2, -0.5, 0, 0.1]], rtol=1e-6)
  shifted = FusionConfig(shift_quality_by_group_min=True)
  np.testing.assert_allclose(fuse_jit(q, div, shifted), [[0, 0.5, 2, 0.3]], rtol=1e-6)


def test_random_groups_match_reference():
  rng = np.random.default_rng(0)
  b, g = 5, 8
  q = rng.normal(size=(b, g)).astype(np.float32)
  q[1] = 1.0  # a constant group
  div = rng.choice([0.1, 1 / 7, 3 / 7, 1.0], size=(b, g)).astype(np.float32)
  valid = rng.random((b, g)) < 0.8
  valid[:, 0] = True
  configs = {(mode.value, shift): FusionConfig(mode, 1.5, 0.7, shift)
             for mode in Fusion for shift in (False, True)}
  # Every configuration in one program: one compile instead of eight.
  outs = jax.jit(lambda q, div, valid: {
      key: fuse(q, div, cfg, valid) for key, cfg in configs.items()})(q, div, valid)
  for (mode, shift), out in outs.items():
    out = np.asarray(out)
    for k in range(b):
      m = valid[k]
      expected = ref.fuse(q[k][m], div[k][m], mode, 1.5, 0.7, shift)
      np.testing.assert_allclose(out[k][m], expected, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{mode} shift={shift}")
      np.testing.assert_array_equal(out[k][~m], 0.0)


def test_config_validation():
  with pytest.raises(InputError, match="fusion.mode.*'mult'"):
    FusionConfig("mult")
  with pytest.raises(InputError, match="fusion.quality_weight"):
    FusionConfig(quality_weight=float("nan"))
  assert FusionConfig("additive").mode is Fusion.ADDITIVE
