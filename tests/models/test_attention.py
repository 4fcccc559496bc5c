"""Tests `darling_jax/models/attention.py` (+ attention_blockwise.py): every backend == einsum.

Values and gradients (of a non-linear scalar of the output, wrt q, k, v) under left padding, fully
padded rows, packed segments, GQA 1/2/4/8, head dims 64/80/128, odd lengths, causal and not.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models import attention as attn
from darling_jax.models.decoder import Decoder, KVCache, positions_from_mask
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.decoder_init import init_decoder

# (N, K, H): GQA ratios 1, 2, 4, 8 over head dims 64, 80, 128.
HEADS = [(2, 2, 64), (4, 2, 80), (4, 1, 128), (8, 1, 64)]
# Small blocks so odd lengths span several tiles, a ragged last tile and skipped causal tiles.
SMALL_BLOCKS = {"block_q": 16, "block_k": 8}


def _segments(B: int, T: int) -> np.ndarray:
  """Row 0: no padding; row 1: left padding; row 2: all padding; row 3: three packed segments."""
  seg = np.ones((B, T), np.int32)
  seg[1, :T // 3] = 0
  seg[2] = 0
  seg[3] = 0
  seg[3, 2:T // 2], seg[3, T // 2:T - 4], seg[3, T - 4:] = 1, 2, 3
  return seg


def _inputs(B, T, S, N, K, H, dtype=jnp.float32, seed=0):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=s), dtype) for s in ((B, T, N, H), (B, S, K, H),
                                                           (B, S, K, H)))
  return q, k, v


def _value_and_grads(impl, q, k, v, q_seg, kv_seg, causal, **kw):
  def loss(q, k, v):
    o = attn.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal,
                       impl=impl, **kw)
    o32 = o.astype(jnp.float32)
    return jnp.sum(o32 * jnp.cos(o32)), o  # non-linear, so the cotangent varies per element

  (_, o), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return o, g


def _max_err(a, b) -> float:
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def _check_against_einsum(impl, q, k, v, q_seg, kv_seg, causal, tol, relative=False, **kw):
  """Max abs error <= tol (relative: <= tol * max |einsum|) for the output and dq, dk, dv."""
  o_ref, g_ref = _value_and_grads("einsum", q, k, v, q_seg, kv_seg, causal)
  o, g = _value_and_grads(impl, q, k, v, q_seg, kv_seg, causal, **kw)
  for x in (o, *g):
    assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
  for a, b in zip((o, *g), (o_ref, *g_ref)):
    scale = _max_err(b, jnp.zeros_like(b)) if relative else 1.0
    assert _max_err(a, b) <= tol * scale
  # Rows of segment 0 are exactly zero in every backend.
  np.testing.assert_array_equal(np.asarray(o, np.float32)[np.asarray(q_seg) == 0], 0)
  return o, g


@pytest.mark.parametrize("heads,causal", [(HEADS[0], True), (HEADS[1], False), (HEADS[3], True)])
def test_blockwise_equals_einsum(heads, causal):
  N, K, H = heads
  B, T = 4, 37
  q, k, v = _inputs(B, T, T, N, K, H)
  seg = jnp.asarray(_segments(B, T))
  _, (dq, dk, dv) = _check_against_einsum("blockwise", q, k, v, seg, seg, causal, 1e-5,
                                          **SMALL_BLOCKS)
  # The fully padded row gets no gradient at all.
  assert float(jnp.abs(dq[2]).max()) == 0 and float(jnp.abs(dk[2]).max()) == 0


@pytest.mark.parametrize("impl", ["blockwise", pytest.param("splash", marks=pytest.mark.slow)])
def test_causal_offset_for_a_prefix_of_keys(impl):
  """T < S: query t sees keys s <= t + S - T (new tokens after a cached prefix)."""
  B, T, S, (N, K, H) = 4, 20, 37, HEADS[2]
  q, k, v = _inputs(B, T, S, N, K, H, seed=1)
  kv_seg = _segments(B, S)
  kv_seg[3] = 1  # packed segments need T == S; row 3 is a plain row here
  q_seg = kv_seg[:, S - T:]
  _check_against_einsum(impl, q, k, v, jnp.asarray(q_seg), jnp.asarray(kv_seg), True, 1e-5,
                        **(SMALL_BLOCKS if impl == "blockwise" else {}))


@pytest.mark.slow
@pytest.mark.parametrize("heads,causal", [(HEADS[0], False), (HEADS[3], True)])
def test_splash_interpret_equals_einsum(heads, causal):
  N, K, H = heads
  B, T = 4, 37
  q, k, v = _inputs(B, T, T, N, K, H)
  seg = jnp.asarray(_segments(B, T))
  _check_against_einsum("splash", q, k, v, seg, seg, causal, 1e-5)


@pytest.mark.slow
def test_splash_under_a_mesh_shards_batch_and_heads():
  mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
  B, T, (N, K, H) = 4, 37, HEADS[1]  # G = 2, H = 80; 2 kv heads over tensor = 2
  q, k, v = _inputs(B, T, T, N, K, H, seed=2)
  seg = jnp.asarray(_segments(B, T))
  _check_against_einsum("splash", q, k, v, seg, seg, True, 1e-5, mesh=mesh)


@pytest.mark.parametrize("impl", ["blockwise", pytest.param("splash", marks=pytest.mark.slow)])
def test_bfloat16_tolerance(impl):
  """bf16 inputs: within 2e-2 x max|einsum| of the bf16 einsum (measured 2026-12-04: output
  4.6e-3, dq 1.4e-2, dk 1.1e-2, dv 5e-3 for blockwise and splash; the bf16 einsum itself is 7e-3
  off the float32 result, blockwise 1.2e-2, both from bf16 rounding of P and dS)."""
  B, T, N, K, H = 4, 37, 4, 2, 64
  q, k, v = _inputs(B, T, T, N, K, H, jnp.bfloat16, seed=3)
  seg = jnp.asarray(_segments(B, T))
  o, _ = _check_against_einsum(impl, q, k, v, seg, seg, True, 2e-2, relative=True,
                               **(SMALL_BLOCKS if impl == "blockwise" else {}))
  assert o.dtype == jnp.bfloat16


def test_no_segment_ids_means_one_full_segment():
  q, k, v = _inputs(2, 19, 19, 4, 2, 64, seed=4)

  @jax.jit
  def errors(q, k, v):
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    return [jnp.max(jnp.abs(attn.attention(q, k, v, causal=True, impl=impl) - ref))
            for impl in ("einsum", "blockwise")]

  assert max(errors(q, k, v)) <= 1e-5


def test_auto_rule():
  bf16, f32 = jnp.bfloat16, jnp.float32
  for platform in ("cpu", "tpu", "gpu"):  # auto picks cudnn only on GPU
    picks = {attn.resolve_impl("auto", t, t, d, h, platform)
             for t in (16, 8192) for d in (bf16, f32) for h in (64, 256)}
    assert ("cudnn" in picks) == (platform == "gpu")
  assert attn.resolve_impl("auto", 512, 512, f32, 64, "cpu") == "einsum"
  assert attn.resolve_impl("auto", 513, 512, f32, 64, "cpu") == "blockwise"
  assert attn.resolve_impl("auto", 8, 8, bf16, 64, "tpu") == "splash"
  assert attn.resolve_impl("auto", 8, 8, bf16, 128, "gpu") == "cudnn"
  assert attn.resolve_impl("auto", 8, 8, f32, 128, "gpu") == "blockwise"  # cudnn: 16-bit only
  assert attn.resolve_impl("einsum", 8192, 8192, f32, 64, "tpu") == "einsum"
  assert jax.default_backend() != "cpu" or attn.resolve_impl("auto", 8, 8, bf16, 64) == "einsum"
  # The platform follows the mesh: an ahead-of-time TPU compile on this CPU host means splash.
  # (A stand-in for the AbstractMesh of a TPU topology: libtpu is not a test dependency.)
  tpu = types.SimpleNamespace(platform="tpu")
  tpu_mesh = types.SimpleNamespace(empty=False, abstract_device=tpu)
  assert attn.mesh_platform(tpu_mesh) == "tpu"
  assert attn.mesh_platform(Mesh(np.asarray(jax.devices()[:1]), ("data",))) == "cpu"
  assert attn.mesh_platform(None) == jax.default_backend()


@pytest.mark.parametrize("T", [37, 20])
def test_cudnn_arguments_express_the_mask(T):
  """The cudnn call's mask arguments, run through jax's XLA implementation, give the einsum."""
  B, S = 4, 37
  q, k, v = _inputs(B, T, S, 4, 2, 64, seed=5)
  kv_seg = _segments(B, S)
  kv_seg[3] = 1
  cases = [(seg, causal) for seg in (True, False) for causal in (True, False)]

  @jax.jit
  def outputs(q, k, v, q_seg, kv_seg):
    outs = []
    for segments, causal in cases:
      qs, ks = (q_seg, kv_seg) if segments else (None, None)
      args = attn.cudnn_call_args(qs, ks, causal, T, S)
      assert (args["mask"] is None) == (not segments and (not causal or S == T))
      out = jax.nn.dot_product_attention(q, k, v, implementation="xla", **args)
      ref = attn.attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, causal=causal,
                           impl="einsum")
      outs.append((out, ref))
    return outs

  q_seg = kv_seg[:, S - T:]
  for (segments, _), (out, ref) in zip(cases, outputs(q, k, v, q_seg, kv_seg)):
    real = q_seg > 0 if segments else np.ones((B, T), bool)
    assert _max_err(out[real], ref[real]) <= 1e-5


def test_bad_backend_names_the_field():
  from darling_jax.train.config import PolicyConfig

  with pytest.raises(InputError, match="policy.attention"):
    PolicyConfig(init_preset="tiny", tokenizer="smollm2", attention="flash")
  with pytest.raises(InputError, match="Decoder.attention"):
    Decoder(DecoderConfig.tiny(), rngs=nnx.Rngs(0), attention="flash")
  with pytest.raises(InputError, match="attention"):
    attn.attention(*_inputs(1, 4, 4, 2, 2, 8), impl="flash")


def test_blockwise_needs_less_temporary_memory():
  """Compile-only: forward + backward temporaries at T = 2048 (benchmarks/ has the big table)."""
  shape = jax.ShapeDtypeStruct((1, 2048, 4, 64), jnp.bfloat16)

  def temp(impl):
    def loss(q, k, v):
      return jnp.sum(attn.attention(q, k, v, causal=True, impl=impl).astype(jnp.float32))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad.lower(shape, shape, shape).compile().memory_analysis().temp_size_in_bytes

  assert temp("blockwise") * 4 < temp("einsum")


@pytest.fixture(scope="module")
def tiny_qwen3():
  return init_decoder(DecoderConfig.tiny(Family.QWEN3))  # jitted init: faster than eager


@pytest.mark.parametrize("impl", ["blockwise", pytest.param("splash", marks=pytest.mark.slow)])
def test_decoder_hidden_states_match_einsum(tiny_qwen3, impl):
  graphdef, state = nnx.split(tiny_qwen3)
  rng = np.random.default_rng(6)
  B, T = 4, 21
  ids = jnp.asarray(rng.integers(3, 128, (B, T)), jnp.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, :5] = 0
  mask[2] = 0
  seg = _segments(B, T)
  pos = np.zeros((B, T), np.int32)
  for b in range(B):  # per-segment positions for the packed call
    for s in set(seg[b]) - {0}:
      pos[b, seg[b] == s] = np.arange(np.sum(seg[b] == s))

  def forward(state, backend):
    m = nnx.merge(graphdef, state)
    m.attention, m.remat = backend, True  # the training forward: remat'd blocks
    return (m.hidden_states(ids, jnp.asarray(mask)),
            m.hidden_states(ids, positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))

  def loss(state, backend):
    padded, packed = forward(state, backend)
    real = (jnp.asarray(mask) > 0)[..., None]  # padding rows' hidden states are never read
    packed_real = jnp.asarray(seg > 0)[..., None]
    return jnp.sum(jnp.where(real, jnp.sin(padded), 0) + jnp.where(packed_real, jnp.cos(packed), 0))

  run = jax.jit(lambda s, b: (forward(s, b), jax.grad(loss)(s, b)), static_argnums=1)
  (ours, ours_grad), (ref, ref_grad) = run(state, impl), run(state, "einsum")
  for a, b in zip(ours, ref):
    assert _max_err(a, b) <= 1e-5
  for a, b in zip(jax.tree.leaves(ours_grad), jax.tree.leaves(ref_grad)):
    # Parameter gradients sum over every token: up to ~300 here (measured relative error 2e-7).
    scale = max(1.0, _max_err(b, jnp.zeros_like(b)))
    assert _max_err(a, b) <= 1e-5 * scale, (_max_err(a, b), scale)


def test_prefill_equals_extend_at_index_zero(tiny_qwen3):
  """Same last-column logits and the same cache as `extend(..., index=0, ...)`."""
  graphdef, state = nnx.split(tiny_qwen3)
  rng = np.random.default_rng(7)
  B, P = 3, 13
  ids = jnp.asarray(rng.integers(3, 128, (B, P)), jnp.int32)
  mask = np.ones((B, P), bool)
  mask[1, :4] = False
  mask = jnp.asarray(mask)
  pos = positions_from_mask(mask)

  @jax.jit
  def both(state):
    m = nnx.merge(graphdef, state)
    m.attention = "blockwise"
    cache = m.init_cache(B, P, dtype=jnp.float32)
    h_ext, c_ext = m.extend(ids, pos, cache, jnp.int32(0), mask)
    h_pre, c_pre = m.prefill(ids, pos, cache, mask)
    return m.logits(h_pre[:, -1:]), m.logits(h_ext[:, -1:]), c_pre, c_ext

  logits_pre, logits_ext, c_pre, c_ext = both(state)
  assert _max_err(logits_pre, logits_ext) <= 1e-5
  real = np.asarray(mask)  # pad slots hold different (never read) K/V from layer 2 on
  assert isinstance(c_pre, KVCache)
  for a, b in ((c_pre.k, c_ext.k), (c_pre.v, c_ext.v)):
    assert _max_err(np.asarray(a)[:, real], np.asarray(b)[:, real]) <= 1e-5


def test_splash_on_several_tpus_without_a_mesh(monkeypatch):
  """auto falls back to blockwise (it would meet inputs it cannot partition); splash refuses."""
  assert jax.device_count() > 1  # conftest's 8 host devices
  monkeypatch.setattr(attn, "mesh_platform", lambda mesh=None: "tpu")
  q, k, v = _inputs(1, 8, 8, 2, 2, 64)
  with pytest.raises(InputError, match="needs a mesh"):
    attn.attention(q, k, v, impl="splash")
  ref = attn.attention(q, k, v, impl="einsum")
  assert _max_err(attn.attention(q, k, v, impl="auto"), ref) <= 1e-5


def test_sampler_greedy_rollouts_do_not_depend_on_the_prefill_backend(tiny_qwen3):
  from darling_jax.sampling.config import SamplerConfig
  from darling_jax.sampling.sampler import sample

  cfg = SamplerConfig(max_new_tokens=6, num_samples=2, greedy=True, cache_dtype="float32")
  rng = np.random.default_rng(8)
  ids = rng.integers(3, 128, (2, 11)).astype(np.int32)
  mask = np.ones((2, 11), bool)
  mask[1, :5] = False
  graphdef, state = nnx.split(tiny_qwen3)
  tokens = {}
  for impl in ("einsum", "blockwise"):
    m = nnx.merge(graphdef, state)
    m.attention = impl
    g, s = nnx.split(m)
    out = sample(g, s, ids, mask, jax.random.key(0), cfg)
    tokens[impl] = np.asarray(out.tokens)
  np.testing.assert_array_equal(tokens["blockwise"], tokens["einsum"])


def test_splash_under_highest_precision_is_one_clear_error():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from darling_jax.errors import InputError  # pylint: disable=import-outside-toplevel
  from darling_jax.models.attention import _splash_local  # pylint: disable=import-outside-toplevel

  q = jnp.zeros((1, 128, 2, 64), jnp.bfloat16)
  seg = jnp.ones((1, 128), jnp.int32)
  with jax.default_matmul_precision("highest"):
    with pytest.raises(InputError, match="jax_default_matmul_precision"):
      _splash_local(q, q, q, seg, seg, True, interpret=False)
