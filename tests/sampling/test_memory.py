"""KV-cache / activation estimates and the clear error for requests that cannot fit."""

import jax
import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.memory import available_bytes, check_fits, estimate_bytes
from darling_jax.sampling.sampler import sample
from darling_jax.sharding import MeshConfig, make_mesh


def test_kv_cache_bytes_follow_the_prefix_shared_layout():
  mc = DecoderConfig.qwen3_0p6b()  # L 28, K 8, H 128
  cfg = SamplerConfig(max_new_tokens=256, num_samples=8, cache_dtype="bfloat16")
  est = estimate_bytes(mc, cfg, num_prompts=32, prompt_len=128)
  per_slot = 2 * 28 * 8 * 128 * 2  # K and V, every layer, bf16
  assert est.prompt_cache == 32 * 128 * per_slot  # once per prompt, not per sample
  assert est.decode_cache == 32 * 8 * 255 * per_slot
  assert est.total == est.kv_cache + est.activations + est.outputs
  assert est.per_device == est.total  # no mesh: one device holds everything
  f32 = estimate_bytes(mc, SamplerConfig(max_new_tokens=256, num_samples=8, cache_dtype="float32"),
                       num_prompts=32, prompt_len=128)
  assert f32.kv_cache == 2 * est.kv_cache


def test_per_device_share_on_a_mesh():
  mc = DecoderConfig.qwen3_0p6b()
  cfg = SamplerConfig(max_new_tokens=64, num_samples=8)
  mesh = make_mesh(MeshConfig(data=4, tensor=2))
  est = estimate_bytes(mc, cfg, num_prompts=8, prompt_len=64, mesh=mesh)
  # Rows over 4 data shards and 8 KV heads over 2 tensor shards: the cache splits 8 ways.
  assert est.per_device == (est.kv_cache // 8 + (est.activations + est.outputs) // 4)


def test_a_request_that_cannot_fit_names_its_numbers():
  mc = DecoderConfig.qwen3_0p6b()
  cfg = SamplerConfig(max_new_tokens=8192, num_samples=8)
  est = estimate_bytes(mc, cfg, num_prompts=256, prompt_len=1024)
  with pytest.raises(InputError) as err:
    check_fits(est, cfg, 256, 1024, limit_bytes=80 * 2**30)
  msg = str(err.value)
  for part in ("256 prompts x 8 samples = 2048 rollouts", "1024 prompt + 8192 new tokens",
               f"{est.kv_cache / 2**30:.2f} GiB", "80.00 GiB"):
    assert part in msg, msg
  check_fits(est, cfg, 256, 1024, limit_bytes=est.total)  # exactly enough passes


def test_available_bytes_falls_back_to_host_ram_on_cpu():
  free, per_device = available_bytes()
  if jax.devices()[0].memory_stats() is None:
    assert not per_device
  assert free > 0


def test_sampler_refuses_before_allocating():
  """Abstract params: nothing could run, so an error must come from the estimate."""
  from flax import nnx

  from darling_jax.models.decoder import Decoder

  graphdef, params = nnx.split(nnx.eval_shape(
      lambda: Decoder(DecoderConfig.tiny(), rngs=nnx.Rngs(0))))
  ids = np.ones((2, 8), np.int32)
  with pytest.raises(InputError, match="2 prompts x 4 samples = 8 rollouts"):
    sample(graphdef, params, ids, ids > 0, jax.random.key(0),
           SamplerConfig(max_new_tokens=16, num_samples=4), memory_limit_bytes=1000)
