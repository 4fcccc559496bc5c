"""Logit filters and token choice vs transformers' warper semantics (NumPy reference)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from darling_jax.errors import InputError
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.filters import (
    MinP, Temperature, TopK, TopP, apply_filters, choose_tokens, filters_for, row_keys)

_spec = importlib.util.spec_from_file_location(
    "sampling_reference", pathlib.Path(__file__).with_name("reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

SETTINGS = [
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.8),
    dict(min_p=0.1),
    dict(temperature=1.3, top_k=12, top_p=0.9),
    dict(temperature=0.8, top_k=8, top_p=0.9, min_p=0.05),
]
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) for kw in SETTINGS]
FIT_SETTINGS = [dict(), dict(top_p=0.85), dict(temperature=0.8, top_k=8, top_p=0.9, min_p=0.05)]
N_DRAWS = 20000

# Every setting is evaluated inside one jitted program per fixture: a compile per setting would
# dominate the test time on a small CPU machine.


@pytest.fixture(scope="module")
def filtered():
  logits = np.random.default_rng(0).normal(0.0, 2.0, (64, 40)).astype(np.float32)
  cfgs = [SamplerConfig(**kw) for kw in SETTINGS]
  out = jax.jit(lambda x: [apply_filters(filters_for(c), x) for c in cfgs])(jnp.asarray(logits))
  return logits, [np.asarray(o) for o in out]


@pytest.mark.parametrize("i", range(len(SETTINGS)), ids=IDS)
def test_filtered_set_matches_transformers_semantics(filtered, i):
  logits, outs = filtered
  want = ref.filtered_logits(logits, **SETTINGS[i])
  np.testing.assert_array_equal(np.isfinite(outs[i]), np.isfinite(want))
  kept = np.isfinite(want)
  np.testing.assert_allclose(outs[i][kept], want[kept], rtol=1e-6)


def test_top_p_with_candidates_equals_full_sort():
  logits = jnp.asarray(np.random.default_rng(1).normal(0, 2, (32, 50)), jnp.float32)
  pruned, full = jax.jit(lambda x: (TopP(0.8, candidates=7)(TopK(7)(x)), TopP(0.8)(TopK(7)(x))))(
      logits)
  np.testing.assert_array_equal(np.asarray(pruned), np.asarray(full))
  assert np.isinf(np.asarray(full)).any()


@pytest.fixture(scope="module")
def sampled():
  logits = np.random.default_rng(2).normal(0.0, 2.0, (2048, 40)).astype(np.float32)
  cfgs = [SamplerConfig(**kw) for kw in SETTINGS]
  keys = row_keys(jax.random.key(3), 0, 2048)
  out = jax.jit(lambda x, k: [choose_tokens(c, x, k) for c in cfgs])(jnp.asarray(logits), keys)
  return logits, [(np.asarray(t), np.asarray(lp)) for t, lp in out]


@pytest.mark.parametrize("i", range(len(SETTINGS)), ids=IDS)
def test_sampled_tokens_are_never_filtered_and_logprobs_are_exact(sampled, i):
  logits, outs = sampled
  tokens, logprobs = outs[i]
  probs = ref.target_probs(logits, **SETTINGS[i])
  chosen = probs[np.arange(len(tokens)), tokens]
  assert np.all(chosen > 0), "a filtered-out token was sampled"
  np.testing.assert_allclose(logprobs, np.log(chosen), atol=1e-5)


@pytest.fixture(scope="module")
def draws():
  logits = np.random.default_rng(4).normal(0.0, 1.0, (1, 12)).astype(np.float32)
  cfgs = [SamplerConfig(**kw) for kw in FIT_SETTINGS]
  keys = row_keys(jax.random.key(5), 7, N_DRAWS)
  out = jax.jit(lambda x, k: [choose_tokens(c, x, k)[0] for c in cfgs])(
      jnp.asarray(np.repeat(logits, N_DRAWS, 0)), keys)
  return logits, [np.asarray(t) for t in out]


@pytest.mark.parametrize("i", range(len(FIT_SETTINGS)), ids=["plain", "top_p", "all"])
def test_frequencies_match_the_target_distribution(draws, i):
  """Chi-square goodness of fit of 20k draws (fixed key) against the renormalised target."""
  logits, outs = draws
  counts = np.bincount(outs[i], minlength=12)
  probs = ref.target_probs(logits, **FIT_SETTINGS[i])[0]
  assert counts[probs == 0].sum() == 0
  kept = probs > 0
  assert kept.sum() >= 3  # the test must have something to fit
  result = stats.chisquare(counts[kept], N_DRAWS * probs[kept])
  assert result.pvalue > 1e-3, (counts, N_DRAWS * probs)


def test_greedy_takes_the_argmax_and_reports_model_logprob():
  logits = np.random.default_rng(6).normal(0, 2, (16, 30)).astype(np.float32)
  cfg = SamplerConfig(greedy=True, temperature=0.5, top_k=3)  # filters are ignored
  tokens, logprobs = jax.jit(choose_tokens, static_argnums=0)(
      cfg, jnp.asarray(logits), row_keys(jax.random.key(0), 0, 16))
  np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(-1))
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(logprobs), log_softmax.max(-1), atol=1e-5)


def test_row_keys_depend_only_on_key_step_and_row():
  key = jax.random.key(0)
  small = jax.random.key_data(row_keys(key, 3, 2))
  big = jax.random.key_data(row_keys(key, 3, 8))
  np.testing.assert_array_equal(np.asarray(small), np.asarray(big[:2]))
  other_step = jax.random.key_data(row_keys(key, 4, 2))
  assert not np.array_equal(np.asarray(small), np.asarray(other_step))


@pytest.mark.parametrize("field,value", [("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5),
                                         ("min_p", 1.0), ("top_k", -1), ("max_new_tokens", 0),
                                         ("num_samples", 0), ("cache_dtype", "int8")])
def test_config_rejects_bad_values_naming_the_field(field, value):
  with pytest.raises(InputError, match=f"sampler.{field}"):
    SamplerConfig(**{field: value})


def test_filter_classes_validate():
  for make in (lambda: Temperature(0.0), lambda: TopK(0), lambda: TopP(0.0), lambda: MinP(1.0)):
    with pytest.raises(InputError):
      make()
