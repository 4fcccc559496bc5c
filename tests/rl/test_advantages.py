"""Group advantages: hand cases, NumPy reference, and the paper's worked example end to end."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darling_jax.diversity import diversity_scores, equivalence_from_probs, union_find_classes
from darling_jax.errors import InputError
from darling_jax.rl import FusionConfig, ScaleRewards, fuse, group_advantages

import testing_support.numpy_rl_reference as ref

adv_jit = jax.jit(group_advantages, static_argnames=("scale", "eps"))


def test_hand_cases():
  r = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 4.0]], np.float32)
  centred = np.array([[-1.5, -0.5, 0.5, 1.5], [-1.0, -1.0, -1.0, 3.0]])
  np.testing.assert_allclose(adv_jit(r, ScaleRewards.NONE), centred, rtol=1e-6)
  # Group std, ddof = 1: sqrt(5/3) and sqrt(12/3) = 2.
  group_std = np.array([[np.sqrt(5 / 3)], [2.0]])
  np.testing.assert_allclose(adv_jit(r, "group", 0.0), centred / group_std, rtol=1e-6)
  np.testing.assert_allclose(adv_jit(r, "group", 0.5), centred / (group_std + 0.5), rtol=1e-6)
  # Batch std, ddof = 1, of all 8 rewards: mean 14/8, sum of squares 46 - 8 * (14/8)^2 = 21.5.
  batch_std = np.sqrt(21.5 / 7)
  np.testing.assert_allclose(adv_jit(r, ScaleRewards.BATCH, 0.0), centred / batch_std, rtol=1e-6)


def test_constant_group_and_single_member_give_zero():
  r = np.array([[0.7] * 8, [0.9] * 8], np.float32)
  for scale in ScaleRewards:
    np.testing.assert_array_equal(adv_jit(r, scale), np.zeros((2, 8)))
  valid = np.zeros((2, 8), bool)
  valid[:, 3] = True
  np.testing.assert_array_equal(adv_jit(np.arange(16.0).reshape(2, 8), "group", 1e-6, valid),
                                np.zeros((2, 8)))


@pytest.mark.parametrize("scale", [s.value for s in ScaleRewards])
def test_random_match_reference(scale):
  rng = np.random.default_rng(1)
  r = rng.normal(size=(6, 8)).astype(np.float32)
  valid = rng.random((6, 8)) < 0.75
  valid[:, :2] = True
  for mask in (None, valid):
    out = np.asarray(adv_jit(r, scale, 1e-6, mask))
    expected = ref.advantages(r, scale, 1e-6, mask)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_bad_scale():
  with pytest.raises(InputError, match="scale.*'std'"):
    group_advantages(jnp.zeros((1, 2)), "std")


def test_paper_worked_example_end_to_end():
  """G = 4: two jokes judged equivalent (p = 0.9 > tau), two singletons; math-style 0/1 quality."""
  probs = np.full((1, 4, 4), 0.1, np.float32)
  probs[0, 0, 1] = 0.9
  quality = np.array([[1.0, 1.0, 0.0, 1.0]], np.float32)

  @jax.jit
  def step(probs, quality):
    classes = union_find_classes(equivalence_from_probs(probs, 0.5))
    div = diversity_scores(classes)
    reward = fuse(quality, div, FusionConfig())
    return classes, div, reward, group_advantages(reward)

  classes, div, reward, adv = step(probs, quality)
  np.testing.assert_array_equal(classes, [[0, 0, 2, 3]])
  np.testing.assert_allclose(div, [[2 / 3, 2 / 3, 1, 1]], rtol=1e-6)
  np.testing.assert_allclose(reward, [[2 / 3, 2 / 3, 0, 1]], rtol=1e-6)
  # mean r = 7/12, so A = r - 7/12.
  np.testing.assert_allclose(adv, [[1 / 12, 1 / 12, -7 / 12, 5 / 12]], rtol=1e-5)
