"""The compiled rollout sampler: prefill each prompt once, share its KV cache with its G samples,
decode all B * G rows in one `lax.while_loop` with static shapes and an early exit.

Axis letters: B prompts, G samples per prompt, R = B * G rows (row r = b * G + g), P prompt length
(left-padded), T new tokens, S = max(T - 1, 1) decode cache slots, L layers, N query heads, K kv
heads, J = N // K query heads per kv head, H head dim, D width, V vocab.

Prefix sharing: the prompt K/V live once per prompt ([L, B, P, K, H]); each decode step attends the
G queries of a prompt to that shared block (read once per group, not once per row) and to the row's
own decode cache ([L, R, S, K, H]), merging both score blocks in one softmax, which is exactly
attention over the concatenated keys. The decode loop runs in up to 4 phases (`decode_phases`), each
reading only the decode slots that can be valid in it, instead of all S slots at every step.

Determinism: the randomness of row r at step t is `fold_in(fold_in(key, t), r)`, a function of the
global row index only, so any mesh (or none) gives the same rollouts for the same key.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jaxtyping import Array, Bool, Float, Int

from darling_jax.errors import InputError
from darling_jax.models.decoder import (
    CACHE_AXES, Decoder, attn_out_and_mlp, positions_from_mask, project_qkv, rms_norm, rope_angles)
from darling_jax.models.decoder_config import rope_inv_freq
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sampling.filters import choose_tokens, row_keys
from darling_jax.sampling.memory import check_fits, estimate_bytes
from darling_jax.sharding.rules import (
    SAMPLING_RULES, LogicalRules, logical_to_spec, state_shardings)

# Same finite mask value as the decoder's attention: fully masked rows stay NaN-free.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


@flax.struct.dataclass
class Rollouts:
  """G rollouts for each of B prompts.

  tokens are padded with `pad_id` after a row's stop token (the stop token itself is kept, with
  mask True); logprobs are log pi_old(token) under the filtered, temperature-scaled distribution
  sampled from (0 where mask is False); lengths = mask.sum(-1).
  """

  tokens: Int[Array, "B G T"]
  logprobs: Float[Array, "B G T"]
  mask: Bool[Array, "B G T"]
  lengths: Int[Array, "B G"]
  prompt_ids: Int[Array, "B P"]
  prompt_mask: Bool[Array, "B P"]


def shared_prefix_attend(
    q_RxNxH: Array,
    prompt_k_BxPxKxH: Array,
    prompt_v_BxPxKxH: Array,
    prompt_mask_BxP: Bool[Array, "B P"],
    gen_k_RxSxKxH: Array,
    gen_v_RxSxKxH: Array,
    gen_valid_S: Bool[Array, "S"],
) -> Array:
  """One query per row attending to its prompt's shared K/V and its own decode K/V.

  softmax([q.k_p / sqrt(H) ; q.k_s / sqrt(H)]) @ [v_p ; v_s], scores and softmax in float32; the G
  rows of a prompt share one read of the prompt block.
  """
  R, N, H = q_RxNxH.shape
  B, P, K, _ = prompt_k_BxPxKxH.shape
  S = gen_k_RxSxKxH.shape[1]
  G, J = R // B, N // K
  dt = q_RxNxH.dtype
  q = q_RxNxH.reshape(B, G, K, J, H)
  gen_k = gen_k_RxSxKxH.reshape(B, G, S, K, H).astype(dt)
  gen_v = gen_v_RxSxKxH.reshape(B, G, S, K, H).astype(dt)
  scale = H**-0.5
  s_prompt = jnp.einsum("bgkjh,bpkh->bgkjp", q, prompt_k_BxPxKxH.astype(dt),
                        preferred_element_type=jnp.float32) * scale
  s_gen = jnp.einsum("bgkjh,bgskh->bgkjs", q, gen_k, preferred_element_type=jnp.float32) * scale
  s_prompt = jnp.where(prompt_mask_BxP[:, None, None, None, :], s_prompt, _MASKED)
  s_gen = jnp.where(gen_valid_S[None, None, None, None, :], s_gen, _MASKED)
  probs = jax.nn.softmax(jnp.concatenate([s_prompt, s_gen], axis=-1), axis=-1).astype(dt)
  out = (jnp.einsum("bgkjp,bpkh->bgkjh", probs[..., :P], prompt_v_BxPxKxH.astype(dt),
                    preferred_element_type=jnp.float32)
         + jnp.einsum("bgkjs,bgskh->bgkjh", probs[..., P:], gen_v,
                      preferred_element_type=jnp.float32))
  return out.reshape(R, N, H).astype(dt)


class _Constrain:
  """with_sharding_constraint by logical axis names (a no-op without a mesh)."""

  def __init__(self, mesh: Mesh | None, rules: LogicalRules):
    self.mesh, self.rules = mesh, rules

  def __call__(self, x: Array, *names: str | None) -> Array:
    if self.mesh is None:
      return x
    spec = logical_to_spec(names, self.rules, self.mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def decode_phases(num_slots: int, max_phases: int = 4, min_block: int = 64) -> list[int]:
  """Upper bounds of the decode phases over `num_slots` cache slots, e.g. 255 -> [96, 176, 255].

  Each phase is its own while_loop whose attention reads only the first `bound` decode slots (every
  slot a step of that phase can have written), so over a rollout the decode-cache reads fall to
  about (1 + 1/phases) / 2 of reading all slots at every step, for at most `max_phases` compiled
  loop bodies; phases are at least `min_block` slots long, bounds multiples of 16 (tile friendly).
  """
  phases = max(1, min(max_phases, num_slots // min_block))
  bounds = [min(num_slots, -(-num_slots * i // (phases * 16)) * 16) for i in range(1, phases)]
  return [*bounds, num_slots]


def _decode_step(model: Decoder, tok_R: Array, pos_R: Array, slot: Array, visible: int,
                 prompt_k: Array, prompt_v: Array, prompt_mask_BxP: Array, gen_k: Array,
                 gen_v: Array):
  """Runs each row's newest token at decode slot `slot` (< `visible`, a static bound on the slots
  attention reads); returns logits [R, V] and the updated caches."""
  mc = model.config
  x = model.embed_tokens(tok_R[:, None])  # [R, 1, D]
  cos, sin = rope_angles(pos_R[:, None], jnp.asarray(rope_inv_freq(mc), jnp.float32))
  gen_valid_S = jnp.arange(visible) <= slot

  def block(carry, xs):
    x, gk_all, gv_all = carry
    lp, pk, pv, layer = xs
    h = rms_norm(x, lp["attn_norm"], mc.rms_norm_eps)
    q, k, v = project_qkv(mc, lp, h, cos, sin)
    # The caches ride in the scan carry and are updated one slot in place; as scan xs/ys they would
    # be copied whole every step.
    start = (layer, 0, slot, 0, 0)
    gk_all = jax.lax.dynamic_update_slice(gk_all, k[None].astype(gk_all.dtype), start)
    gv_all = jax.lax.dynamic_update_slice(gv_all, v[None].astype(gv_all.dtype), start)
    out = shared_prefix_attend(q[:, 0], pk, pv, prompt_mask_BxP, gk_all[layer][:, :visible],
                               gv_all[layer][:, :visible], gen_valid_S)
    return (attn_out_and_mlp(mc, lp, x, out[:, None]), gk_all, gv_all), None

  layers = jnp.arange(mc.num_layers)
  (x, gen_k, gen_v), _ = jax.lax.scan(
      block, (x, gen_k, gen_v), (model.layers.stacked(), prompt_k, prompt_v, layers))
  hidden = rms_norm(x, model.final_norm[...], mc.rms_norm_eps)
  return model.logits(hidden)[:, 0], gen_k, gen_v


def _rollout(graphdef, params, prompt_ids_BxP, prompt_mask_BxP, key, *, cfg: SamplerConfig,
             pad_id: int, mesh: Mesh | None, rules: LogicalRules) -> Rollouts:
  model: Decoder = nnx.merge(graphdef, params)
  mc = model.config
  c = _Constrain(mesh, rules)
  B, P = prompt_ids_BxP.shape
  G, T = cfg.num_samples, cfg.max_new_tokens
  R, S = B * G, max(T - 1, 1)
  L, K, H = mc.num_layers, mc.num_kv_heads, mc.head_dim
  cache_dtype = cfg.cache_jnp_dtype
  stop = jnp.asarray(cfg.stop_ids, jnp.int32)
  is_stop = (lambda t: jnp.isin(t, stop)) if cfg.stop_ids else (lambda t: jnp.zeros(t.shape, bool))

  # ---- prefill: each prompt once --------------------------------------------------------------
  ids = c(prompt_ids_BxP.astype(jnp.int32), "batch", "length")
  pmask = c(prompt_mask_BxP.astype(bool), "batch", "length")
  cache = model.init_cache(B, P, dtype=cache_dtype)
  # The prompt attends only to itself: the model's attention backend, not the cache einsum.
  hidden_BxPxD, cache = model.prefill(ids, positions_from_mask(pmask), cache, pmask)
  # Left padding puts every prompt's last real token in the last column.
  logits_BxV = model.logits(hidden_BxPxD[:, -1:])[:, 0]
  prompt_k, prompt_v = c(cache.k, *CACHE_AXES), c(cache.v, *CACHE_AXES)
  chex.assert_shape(prompt_k, (L, B, P, K, H))

  # ---- fork: G rows per prompt; the first token comes from the shared prefill logits ------------
  n_R = jnp.repeat(jnp.sum(pmask, axis=-1, dtype=jnp.int32), G)
  logits_RxV = c(jnp.repeat(logits_BxV, G, axis=0), "batch", None)
  tok_R, lp_R = choose_tokens(cfg, logits_RxV, row_keys(key, 0, R))
  tokens_RxT = c(jnp.full((R, T), pad_id, jnp.int32).at[:, 0].set(tok_R), "batch", None)
  logprobs_RxT = c(jnp.zeros((R, T), jnp.float32).at[:, 0].set(lp_R), "batch", None)
  mask_RxT = c(jnp.zeros((R, T), bool).at[:, 0].set(True), "batch", None)
  gen_k = c(jnp.zeros((L, R, S, K, H), cache_dtype), *CACHE_AXES)
  gen_v = c(jnp.zeros((L, R, S, K, H), cache_dtype), *CACHE_AXES)

  # ---- decode: step t feeds token t-1 (decode slot t-1) and samples token t -------------------
  def cond(state, end):
    t, _, done_R = state[:3]
    return (t < end) & ~jnp.all(done_R)

  def body(state, visible):
    t, tok_R, done_R, tokens_RxT, logprobs_RxT, mask_RxT, gen_k, gen_v = state
    logits_RxV, gen_k, gen_v = _decode_step(model, tok_R, n_R + t - 1, t - 1, visible, prompt_k,
                                            prompt_v, pmask, gen_k, gen_v)
    new_R, lp_R = choose_tokens(cfg, c(logits_RxV, "batch", None), row_keys(key, t, R))
    new_R = jnp.where(done_R, pad_id, new_R)
    lp_R = jnp.where(done_R, 0.0, lp_R)

    def col(a, v):  # writes column t
      return jax.lax.dynamic_update_slice_in_dim(a, v[:, None].astype(a.dtype), t, 1)

    return (t + 1, new_R, done_R | is_stop(new_R), c(col(tokens_RxT, new_R), "batch", None),
            c(col(logprobs_RxT, lp_R), "batch", None), c(col(mask_RxT, ~done_R), "batch", None),
            c(gen_k, *CACHE_AXES), c(gen_v, *CACHE_AXES))

  def body_every_k(state, visible, end):
    # k steps per loop iteration, so the all-rows-done reduction (a cross-device one on a mesh)
    # runs once per k steps. Steps past `end` are skipped; steps after every row stopped only
    # write padding with mask False, so tokens, logprobs and mask equal the k = 1 loop's.
    for _ in range(k):
      state = jax.lax.cond(state[0] < end, functools.partial(body, visible=visible),
                           lambda st: st, state)
    return state

  k = cfg.stop_check_every
  state = (jnp.int32(1), tok_R, is_stop(tok_R), tokens_RxT, logprobs_RxT, mask_RxT, gen_k, gen_v)
  for visible in decode_phases(S):  # phase: steps t whose slot t-1 < visible
    end = min(visible + 1, T)
    step = (functools.partial(body, visible=visible) if k == 1
            else functools.partial(body_every_k, visible=visible, end=end))
    state = jax.lax.while_loop(functools.partial(cond, end=end), step, state)
  _, _, _, tokens_RxT, logprobs_RxT, mask_RxT, _, _ = state
  per_prompt = lambda a: c(a.reshape(B, G, *a.shape[1:]), "batch", None, None)  # noqa: E731
  return Rollouts(
      tokens=per_prompt(tokens_RxT),
      logprobs=per_prompt(logprobs_RxT),
      mask=per_prompt(mask_RxT),
      lengths=c(jnp.sum(mask_RxT, axis=-1, dtype=jnp.int32).reshape(B, G), "batch", None),
      prompt_ids=ids,
      prompt_mask=pmask,
  )


rollout_jit = jax.jit(_rollout, static_argnames=("graphdef", "cfg", "pad_id", "mesh", "rules"))
_rollout_jit = rollout_jit  # the name tests read the compile cache through


def input_shardings(params: nnx.State, mesh: Mesh, rules: LogicalRules,
                    prompt_shape: tuple[int, int]) -> tuple[nnx.State, NamedSharding, NamedSharding]:
  """Where `sample` puts (params, prompt ids/mask [B, P], key) before the rollout program runs:
  params by `rules` (tensor parallel, no FSDP), prompts over the batch axes, the key replicated."""
  batch = NamedSharding(mesh, logical_to_spec(("batch", "length"), rules, mesh, prompt_shape))
  return (state_shardings(params, mesh, rules), batch,
          NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _check_prompts(ids: np.ndarray, mask: np.ndarray, vocab: int, cfg: SamplerConfig,
                   max_positions: int) -> None:
  if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[0] == 0 or ids.shape[1] == 0:
    raise InputError("sampler.prompts", f"expected prompt ids and mask of one shape [B, P] with "
                     f"B, P >= 1, got {ids.shape} and {mask.shape}")
  mask = mask.astype(bool)
  if np.any(mask[:, :-1] & ~mask[:, 1:]):
    raise InputError("sampler.prompt_mask", "prompts must be left-padded (no padding after a "
                     "real token); use darling_jax.sampling.text.left_pad")
  real = ids[mask]
  if real.size and (real.min() < 0 or real.max() >= vocab):
    raise InputError("sampler.prompt_ids", f"token ids must be in [0, {vocab}), got "
                     f"[{real.min()}, {real.max()}]")
  longest = int(mask.sum(-1).max()) + cfg.max_new_tokens
  if longest > max_positions:
    raise InputError("sampler", f"prompt ({int(mask.sum(-1).max())} tokens) + max_new_tokens "
                     f"({cfg.max_new_tokens}) = {longest} exceeds the model's "
                     f"max_position_embeddings={max_positions}")


def sample(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids: Int[Array, "B P"],
    prompt_mask: Bool[Array, "B P"],
    key: Array,
    cfg: SamplerConfig,
    *,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules: LogicalRules = SAMPLING_RULES,
    memory_limit_bytes: int | None = None,
) -> Rollouts:
  """G = cfg.num_samples rollouts for each left-padded prompt, from a (graphdef, params) policy.

  The compiled function is cached per (graphdef, cfg, mesh, shapes): passing new params of the same
  shapes (the trainer's current policy) does not retrace. With a mesh, params are placed by
  `rules` (tensor-parallel heads/MLP, no FSDP) and rollouts are split over the data axes.

  Raises:
    InputError: malformed prompts, or a request whose KV cache + activations (estimated before
      anything is allocated) exceed the device memory / `memory_limit_bytes`.
  """
  mc = graphdef_config(graphdef, params)
  ids_np, mask_np = np.asarray(prompt_ids), np.asarray(prompt_mask)
  _check_prompts(ids_np, mask_np, mc.vocab_size, cfg, mc.max_position_embeddings)
  B, P = ids_np.shape
  est = estimate_bytes(mc, cfg, B, P, mesh=mesh, rules=rules)
  check_fits(est, cfg, B, P, mesh=mesh, limit_bytes=memory_limit_bytes)
  ids, mask = jnp.asarray(ids_np, jnp.int32), jnp.asarray(mask_np, bool)
  if mesh is not None:
    params_sh, batch, key_sh = input_shardings(params, mesh, rules, ids.shape)
    params = jax.device_put(params, params_sh)
    ids, mask = jax.device_put(ids, batch), jax.device_put(mask, batch)
    key = jax.device_put(key, key_sh)
  return rollout_jit(graphdef, params, ids, mask, key, cfg=cfg, pad_id=int(pad_id), mesh=mesh,
                      rules=rules)


def graphdef_config(graphdef: nnx.GraphDef, params: nnx.State):
  """The DecoderConfig of a split Decoder (merged abstractly: nothing is copied)."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  model = nnx.merge(graphdef, abstract)
  if not isinstance(model, Decoder):
    raise InputError("sampler", f"expected a darling_jax Decoder, got {type(model).__name__}")
  return model.config


def sample_model(model: Decoder, prompt_ids, prompt_mask, key, cfg: SamplerConfig,
                 **kwargs) -> Rollouts:
  """`sample` for a live Decoder (splits it; the compiled function is shared with `sample`)."""
  graphdef, params = nnx.split(model)
  return sample(graphdef, params, prompt_ids, prompt_mask, key, cfg, **kwargs)
