"""One attention entry point, `attention(q, k, v, ...)`, over four backends.

Axis letters: B batch, T queries, S keys/values, N query heads, K kv heads, G = N // K query heads
per kv head (grouped-query attention; K/V are never repeated in memory), H head dim.

Mask (every backend): query t attends key s iff kv_seg[s] > 0, q_seg[t] == kv_seg[s] and, when
causal, s <= t + (S - T) (bottom-right aligned: with S = T this is s <= t; a prefill over a cache
of S >= T slots ending at the new tokens also fits). Segment id 0 is padding. A query that sees no
key (every query of segment 0) outputs exactly 0, so all backends agree on every row, and padding
gets no gradient. Scores and softmax statistics are float32; the output has q's dtype.

Backends (`impl`):
  einsum     the plain [T, S] score matrix; the reference.
  blockwise  pure-JAX flash attention (attention_blockwise.py): O(T x block) memory, forward and
             backward.
  splash     the TPU Pallas splash kernel, inside `shard_map` (interpret mode off TPU; slow).
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16).
  auto       TPU -> splash; GPU -> cudnn for 16-bit inputs with H <= 128, else blockwise (and
             blockwise when cudnn refuses the call at trace time); CPU -> blockwise when
             T * S > 512 * 512 (where it also gets faster than the einsum), else einsum. The
             platform is the mesh's (argument or ambient), so an ahead-of-time compile for a TPU
             topology on a CPU host picks (and does not interpret) splash.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P
from jaxtyping import Array, Bool, Int

from darling_jax.errors import InputError
from darling_jax.models.attention_blockwise import blockwise_attention

IMPLS = ("auto", "einsum", "blockwise", "splash", "cudnn")
# CPU: above this many (query, key) pairs blockwise is also the faster one (2-core CPU, causal,
# 8/2 heads, H 64, fwd+bwd, 2026-12-04: 0.7-1.1x the einsum's time at T = 256-512, 0.3x at 1k and
# 2k); below it the einsum's single fused tile has less loop overhead (4x faster at T = 64).
AUTO_BLOCKWISE_MIN_TS = 512 * 512
SPLASH_BLOCK = 128  # the splash kernel's lane-aligned tile (its sequence lengths are padded to it)

# Finite rather than -inf: a fully masked row gives a finite softmax (then zeroed), never NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def check_impl(impl: str, where: str = "attention") -> str:
  if impl not in IMPLS:
    raise InputError(where, f"unknown attention backend {impl!r}; choose from {list(IMPLS)}")
  return impl


def mesh_platform(mesh: Mesh | AbstractMesh | None = None) -> str:
  """"tpu"/"gpu"/"cpu" of `mesh` (default: the ambient mesh), else JAX's default backend.

  From the mesh, not the process: a CPU host compiling ahead of time for a TPU topology (see
  environment.md) must pick, and not interpret, the TPU kernel.
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if isinstance(mesh, Mesh) and not mesh.empty:
    return mesh.devices.flat[0].platform
  device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
  return jax.default_backend() if device is None else device.platform


def resolve_impl(impl: str, T: int, S: int, dtype, head_dim: int,
                 platform: str | None = None) -> str:
  """The backend `impl` stands for on `platform` (default: JAX's default backend)."""
  check_impl(impl)
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  if platform == "tpu":
    return "splash"
  if platform in ("gpu", "cuda", "rocm"):
    cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim <= 128
    return "cudnn" if cudnn_ok else "blockwise"
  return "blockwise" if T * S > AUTO_BLOCKWISE_MIN_TS else "einsum"


def visibility(q_seg_BxT: Array, kv_seg_BxS: Array, causal: bool) -> Bool[Array, "B T S"]:
  """[B, T, S] mask of the module docstring's rule (materialised: einsum/cudnn only)."""
  T, S = q_seg_BxT.shape[1], kv_seg_BxS.shape[1]
  ok = (q_seg_BxT[:, :, None] == kv_seg_BxS[:, None, :]) & (kv_seg_BxS[:, None, :] > 0)
  if causal:
    ok = ok & (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + (S - T))[None]
  return ok


def masked_attention(q_BxTxNxH: Array, k_BxSxKxH: Array, v_BxSxKxH: Array,
                     mask_BxTxS: Bool[Array, "B T S"]) -> Array:
  """Grouped-query softmax attention under an explicit mask; scores and softmax in float32.

  A fully masked row gives the uniform average (finite); `attention` zeroes such rows.
  """
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxSxKxH.shape[2]
  q = q_BxTxNxH.reshape(B, T, K, N // K, H)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k_BxSxKxH, preferred_element_type=jnp.float32)
  scores = scores * (H ** -0.5)
  scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH, preferred_element_type=jnp.float32)
  return out.reshape(B, T, N, H).astype(q_BxTxNxH.dtype)


def _einsum(q, k, v, q_seg, kv_seg, causal):
  ok_BxTxS = visibility(q_seg, kv_seg, causal)
  out = masked_attention(q, k, v, ok_BxTxS)
  return jnp.where(jnp.any(ok_BxTxS, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


def cudnn_call_args(q_seg_BxT: Array | None, kv_seg_BxS: Array | None, causal: bool, T: int,
                    S: int) -> dict:
  """Mask arguments of `jax.nn.dot_product_attention` for the module's rule.

  cuDNN's own padding mask (`*_seq_lengths`) assumes right padding and its causal mask is top-left
  aligned, so segments (and a causal mask with S != T) go in as a [B, 1, T, S] boolean mask, which
  jax turns into a bias; causal self-attention without segments needs no mask at all.
  """
  if q_seg_BxT is None and kv_seg_BxS is None and (not causal or S == T):
    return {"mask": None, "is_causal": causal}
  given = q_seg_BxT if q_seg_BxT is not None else kv_seg_BxS
  B = 1 if given is None else given.shape[0]  # no segments: one [1, 1, T, S] causal mask
  q_seg = jnp.ones((B, T), jnp.int32) if q_seg_BxT is None else q_seg_BxT
  kv_seg = jnp.ones((B, S), jnp.int32) if kv_seg_BxS is None else kv_seg_BxS
  causal_in_mask = causal and S != T
  mask = visibility(q_seg, kv_seg, causal_in_mask)[:, None]
  return {"mask": mask, "is_causal": causal and not causal_in_mask}


def _cudnn(q, k, v, q_seg, kv_seg, causal):
  T, S = q.shape[1], k.shape[1]
  args = cudnn_call_args(q_seg, kv_seg, causal, T, S)
  out = jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **args)
  if q_seg is None:
    return out
  return jnp.where((q_seg > 0)[:, :, None, None], out, 0).astype(q.dtype)


def _shard_axes(mesh: Mesh | AbstractMesh, axes: Sequence[str], size: int) -> tuple[str, ...]:
  """The mesh axes among `axes` whose product divides `size` (greedy, in order)."""
  chosen, prod = [], 1
  for a in axes:
    if a in mesh.axis_names and size % (prod * mesh.shape[a]) == 0:
      chosen.append(a)
      prod *= mesh.shape[a]
  return tuple(chosen)


def _no_mesh(mesh: Mesh | AbstractMesh | None) -> bool:
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  return mesh is None or mesh.empty or mesh.size == 1


def _splash_local(q, k, v, q_seg, kv_seg, causal, interpret):
  """Splash on one device's shard: q [B, T, N, H], k/v [B, S, K, H], T and S multiples of 128."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  B, T, N, H = q.shape
  S = k.shape[1]
  head_mask = sm.CausalMask((T, S)) if causal else sm.FullMask((T, S))
  # The MHA kernel maps query head n to kv head n // (N // K) itself, so GQA needs no K/V repeat.
  kernel = sk.make_splash_mha(sm.MultiHeadMask([head_mask] * N), head_shards=1, q_seq_shards=1,
                              block_sizes=sk.BlockSizes.get_default(),
                              interpret=interpret)
  # The kernel takes no scale: fold 1/sqrt(H) into q (in float32, then back to q's dtype).
  q_NxTxH = jnp.swapaxes((q.astype(jnp.float32) * H ** -0.5).astype(q.dtype), 1, 2)
  # Mosaic traces the kernel body when the program is lowered and reads the global matmul
  # precision then: "highest"/"float32" asks for fp32 passes on bf16 operands, which it cannot
  # lower ("Bad lhs type"). Say so here rather than in a compiler dump.
  precision = str(jax.config.jax_default_matmul_precision or "").lower()
  if not interpret and q.dtype == jnp.bfloat16 and precision in ("highest", "float32"):
    raise InputError("policy.attention", "splash cannot run bfloat16 attention under "
                     f"jax_default_matmul_precision={precision!r}; unset it or use "
                     "policy.attention=blockwise")
  out = jax.vmap(kernel)(q_NxTxH, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                         sk.SegmentIds(q=q_seg, kv=kv_seg))
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _splash(q, k, v, q_seg, kv_seg, causal, mesh, batch_axes, head_axis):
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  front = 0
  if causal and S != T:
    if S < T:
      raise InputError("attention", f"causal splash needs S >= T, got T={T}, S={S}")
    # CausalMask(offset=S - T) did not match the reference here (interpret mode, jax 0.10.2);
    # prepending S - T invisible queries aligns the diagonal with offset 0 instead (prefill has
    # S = T).
    front = S - T
  Tp, Sp = (-(-n // SPLASH_BLOCK) * SPLASH_BLOCK for n in (front + T, S))
  # Padding takes segment id 0: padded keys are invisible to real queries. Segment-0 queries see
  # only segment-0 keys (possibly none: the kernel's finite mask value keeps such rows finite);
  # they are sliced off or zeroed below, so their cotangent is 0.
  pad = lambda x, a, b: jnp.pad(x, [(0, 0), (a, b)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  back_q = Tp - T - front
  args = (pad(q, front, back_q), pad(k, 0, Sp - S), pad(v, 0, Sp - S), pad(q_seg, front, back_q),
          pad(kv_seg, 0, Sp - S))
  # Off TPU the kernel runs in Pallas interpret mode: plain JAX ops, slow, for tests.
  interpret = mesh_platform(mesh) != "tpu"
  local = lambda *a: _splash_local(*a, causal, interpret)  # noqa: E731
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  if mesh is not None and not mesh.empty and mesh.size > 1:
    # Mosaic kernels cannot be auto-partitioned: run per shard over batch (and kv heads, whose
    # query heads then shard with them since N is kv-head-major).
    b = _shard_axes(mesh, batch_axes, B) or None
    h = (_shard_axes(mesh, (head_axis,), K) or (None,))[0]
    act, seg = P(b, None, h, None), P(b, None)
    local = jax.shard_map(local, mesh=mesh, in_specs=(act, act, act, seg, seg), out_specs=act,
                          check_vma=False)
  out = local(*args)[:, front:front + T]
  return jnp.where((q_seg > 0)[:, :, None, None], out, 0).astype(q.dtype)


def attention(
    q_BxTxNxH: Array,
    k_BxSxKxH: Array,
    v_BxSxKxH: Array,
    *,
    q_segment_ids: Int[Array, "B T"] | None = None,
    kv_segment_ids: Int[Array, "B S"] | None = None,
    causal: bool = True,
    impl: str = "auto",
    block_q: int = 512,
    block_k: int = 512,
    mesh: Mesh | AbstractMesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    head_axis: str = "tensor",
) -> Array:
  """softmax(q.k / sqrt(H) under the module's mask) @ v -> [B, T, N, H] in q's dtype.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: queries and keys/values; N must be a multiple of K.
    q_segment_ids, kv_segment_ids: int segment ids (0 = padding); None = all ones.
    causal: mask s > t + (S - T).
    impl: one of IMPLS (module docstring).
    block_q, block_k: blockwise tile lengths.
    mesh, batch_axes, head_axis: splash only; the mesh its shard_map runs over (default: the
      ambient `jax.set_mesh` mesh; none = one device), split over the `batch_axes` that divide B
      and over `head_axis` when it divides K.
  """
  B, T, N, H = q_BxTxNxH.shape
  S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  if N % K:
    raise InputError("attention", f"{K} kv heads do not divide {N} query heads")
  platform = mesh_platform(mesh)
  resolved = resolve_impl(impl, T, S, q_BxTxNxH.dtype, H, platform)
  if resolved == "splash" and platform == "tpu" and _no_mesh(mesh) and jax.device_count() > 1:
    # Without a mesh the kernel would meet sharded inputs it cannot be partitioned over.
    if impl != "auto":
      raise InputError("attention", "splash on several TPU devices needs a mesh (the `mesh` "
                       "argument, Decoder.attention_mesh or jax.set_mesh)")
    resolved = "blockwise"
  if resolved == "cudnn":
    try:
      return _cudnn(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_segment_ids, kv_segment_ids, causal)
    except (ValueError, NotImplementedError, RuntimeError):
      if impl != "auto":
        raise
      resolved = "blockwise"  # cudnn refused this shape/dtype/version at trace time
  ones = lambda n: jnp.ones((B, n), jnp.int32)  # noqa: E731
  q_seg = ones(T) if q_segment_ids is None else jnp.asarray(q_segment_ids, jnp.int32)
  kv_seg = ones(S) if kv_segment_ids is None else jnp.asarray(kv_segment_ids, jnp.int32)
  match resolved:
    case "einsum":
      return _einsum(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_seg, kv_seg, causal)
    case "blockwise":
      return blockwise_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_seg, kv_seg, causal=causal,
                                 block_q=block_q, block_k=block_k).astype(q_BxTxNxH.dtype)
    case "splash":
      return _splash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_seg, kv_seg, causal, mesh,
                     tuple(batch_axes), head_axis)
  raise AssertionError(resolved)
