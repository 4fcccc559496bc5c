"""The compiled programs of one training step, built once for `train` and `darling-jax compile`.

Axis letters: B prompts (global), b prompts of this host, G samples per prompt, P prompt length,
N response length, R rows of one scoring call, T their length.

Each builder returns the jitted function the trainer calls; the `*_inputs` helpers give the
abstract arguments (`jax.ShapeDtypeStruct` with the shardings the trainer's arrays carry), so the
compile tool lowers exactly what a step runs, on a mesh this machine need not have:

  sampler     sampling.sampler's rollout (prefill + decode loop), params by SAMPLING_RULES
  classifier  diversity.pair_scoring's row scorer on this host's devices (per-host groups)
  reward      the reward-model quality's row scorer (one device, as the trainer loads it)
  reference   log pi_ref of every rollout token, when beta > 0
  update      rl.update's step: donated state, pinned in/out shardings, micro-batched inside
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from darling_jax.rl.layout import Layout
from darling_jax.rl.packing import batch_devices, plan_layout
from darling_jax.rl.reference import make_reference_logprobs
from darling_jax.rl.state import PackedBatch, TrainState, UpdateBatch
from darling_jax.rl.update import UpdateConfig, make_update_step
from darling_jax.sharding.rules import SAMPLING_RULES, logical_to_spec

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Program:
  """One jitted function and abstract arguments to lower it with (static ones in `kwargs`)."""

  name: str
  fn: Any
  args: tuple[Any, ...]
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ""  # what shapes were assumed (worst cases), shown beside the numbers

  def lower(self):
    return self.fn.lower(*self.args, **self.kwargs)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def abstract(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves, carrying `shardings` (a matching tree) or their own."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def shardings_of(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.sharding, tree)


# ---- the update step -----------------------------------------------------------------------------

def train_state_shardings(tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> TrainState:
  """Shardings of the TrainState around `params` (arrays or ShapeDtypeStructs with shardings).

  Optimizer moments are laid out like the parameter they track; counters, step and rng are
  replicated. Pinned, so the donated state comes back exactly as it went in (no recompiles).
  """
  replicated = NamedSharding(mesh, P())
  params_sh = shardings_of(params)
  opt = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt, params_sh,
                                 transform_non_params=lambda _: replicated, is_leaf=_is_var)
  return TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated)


def init_train_state(tx: optax.GradientTransformation, params: Any, seed: int,
                     mesh: Mesh) -> tuple[TrainState, TrainState]:
  """(state, its shardings) for a fresh run from live `params`.

  Leaves not yet on the mesh (e.g. scalars) are put there replicated, so the jitted step sees the
  same shardings on every call.
  """
  replicated = NamedSharding(mesh, P())
  on_mesh = lambda x: x if (isinstance(getattr(x, "sharding", None), NamedSharding)  # noqa: E731
                            and x.sharding.mesh == mesh) else jax.device_put(x, replicated)
  params = jax.tree.map(on_mesh, params)
  sh = train_state_shardings(tx, params, mesh)
  opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(params)
  state = TrainState(step=jax.device_put(jnp.int32(0), sh.step), params=params,
                     opt_state=opt_state, rng=jax.device_put(jax.random.PRNGKey(seed), sh.rng))
  return state, sh


def abstract_train_state(tx: optax.GradientTransformation, params: Any, mesh: Mesh) -> TrainState:
  """The TrainState as ShapeDtypeStructs (what `init_train_state` would allocate)."""
  sh = train_state_shardings(tx, params, mesh)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                      opt_state=jax.eval_shape(tx.init, params),
                      rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)))
  return abstract(shapes, sh)


def build_update_program(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                         update_cfg: UpdateConfig, mesh: Mesh, state_sh: TrainState,
                         frozen_sh: Any) -> Callable:
  """update(state, batch, frozen) -> (state, metrics): the state donated, its layout pinned."""
  return jax.jit(make_update_step(graphdef, tx, update_cfg, mesh=mesh), donate_argnums=0,
                 in_shardings=(state_sh, None, frozen_sh), out_shardings=(state_sh, None))


def rollout_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """Where the sampler leaves [B, G, N] rollout arrays (their "batch" axis by SAMPLING_RULES)."""
  names = ("batch",) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, logical_to_spec(names, SAMPLING_RULES, mesh, shape))


def update_batch_inputs(mesh: Mesh, B: int, G: int, Pn: int, N: int, *, equiv: bool,
                        diversity: bool, reference: bool) -> UpdateBatch:
  """The UpdateBatch as `collect` builds it: host-made arrays replicated, rollouts as sampled."""
  rep = NamedSharding(mesh, P())
  s = lambda shape, dt, sh=rep: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
  rows = rollout_sharding(mesh, (B, G, N))
  return UpdateBatch(
      prompt_ids=s((B, Pn), jnp.int32), prompt_mask=s((B, Pn), jnp.bool_),
      response_ids=s((B, G, N), jnp.int32, rows), response_mask=s((B, G, N), jnp.bool_, rows),
      old_logprobs=s((B, G, N), jnp.float32, rows), quality=s((B, G), jnp.float32),
      equiv_probs=s((B, G, G), jnp.float32) if equiv else None,
      diversity=s((B, G), jnp.float32) if diversity else None,
      ref_logprobs=s((B, G, N), jnp.float32, rows) if reference else None)


# ---- the reference forward -----------------------------------------------------------------------

def build_reference_program(graphdef: nnx.GraphDef, update_cfg: UpdateConfig,
                            mesh: Mesh | None) -> Callable:
  """ref(params, batch) -> log pi [B, G, N] of every rollout token at the sampling temperature,
  through the update's own layout and micro-batches (rl/reference.py): the KL reference's
  log-probs, and pi_old's when it is recomputed. `batch` is an UpdateBatch or a PackedBatch."""
  return make_reference_logprobs(graphdef, update_cfg, mesh)


def packed_inputs(batch: UpdateBatch, update_cfg: UpdateConfig, mesh: Mesh,
                  max_positions: int | None) -> UpdateBatch | PackedBatch:
  """The update's abstract input as `BatchPacker` makes it: the batch itself (padded layout), or
  the batch and the index arrays of the worst-case plan (every sequence full length), the largest
  shape the step is compiled for."""
  if update_cfg.layout is Layout.PADDED:
    return batch
  B, G, N = batch.response_ids.shape
  Pn = batch.prompt_ids.shape[1]
  plan = plan_layout(np.full((B,), Pn), np.full((B, G), N), Pn, N, update_cfg,
                     batch_devices(mesh), max_positions)
  idx = lambda: jax.ShapeDtypeStruct(plan.shape, jnp.int32,  # noqa: E731
                                     sharding=NamedSharding(mesh, P()))
  return PackedBatch(batch=batch, src=idx(), tgt=idx(), seg=idx(), pos=idx())


# ---- the sampler ---------------------------------------------------------------------------------

def sampler_program(graphdef: nnx.GraphDef, params: Any, sampler_cfg, B: int, Pn: int,
                    pad_id: int, mesh: Mesh) -> Program:
  """The rollout program `sample` runs for B prompts of width P (params: the policy, abstract)."""
  from darling_jax.sampling.sampler import input_shardings, rollout_jit

  params_sh, batch_sh, key_sh = input_shardings(params, mesh, SAMPLING_RULES, (B, Pn))
  args = (graphdef, abstract(params, params_sh),
          jax.ShapeDtypeStruct((B, Pn), jnp.int32, sharding=batch_sh),
          jax.ShapeDtypeStruct((B, Pn), jnp.bool_, sharding=batch_sh),
          jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=key_sh))
  return Program("sampler", rollout_jit, args,
                 dict(cfg=sampler_cfg, pad_id=int(pad_id), mesh=mesh, rules=SAMPLING_RULES),
                 note=f"{B} prompts x {sampler_cfg.num_samples}, {Pn} + "
                      f"{sampler_cfg.max_new_tokens} tokens")


# ---- the classifier ------------------------------------------------------------------------------

class _LongestTokenizer:
  """Stands in for an EncoderTokenizer: every answer is as long as truncation allows and shares
  no word with another, so `build_rows` gives the largest shapes a step can produce."""

  cls_id, sep_id, pad_id, uses_token_type_ids = 1, 2, 0, True

  def encode(self, texts, max_tokens: int) -> list[list[int]]:
    return [[3] * max_tokens for _ in texts]

  def single(self, ids):
    return [self.cls_id, *ids, self.sep_id]

  def pair(self, a, b):
    return [self.cls_id, *a, self.sep_id, *b, self.sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)


def classifier_program(graphdef: nnx.GraphDef, state: Any, clf_cfg, groups: int, G: int,
                       mesh: Mesh, shapes=None) -> Program:
  """PairScorer's device call for `groups` groups of G answers on a scorer mesh (its `rows` axis).

  Rows as `PairScorer.rows` builds them for the longest answers with no short-rule shortcut.
  """
  from darling_jax.diversity import pair_scoring as ps
  from darling_jax.diversity.classifier import PairMode
  from darling_jax.diversity.pair_batches import build_rows, geometric_buckets

  s = shapes or ps.ScoringShapes()
  cross = clf_cfg.mode == PairMode.CROSS
  longest = (2 * clf_cfg.max_tokens + 3) if cross else (clf_cfg.max_tokens + 2)
  texts = [[f"answer {b} {g}" for g in range(G)] for b in range(groups)]
  rows = build_rows(
      texts, _LongestTokenizer(), cross=cross, max_tokens=clf_cfg.max_tokens,
      symmetric=clf_cfg.symmetric, short_rule_words=None,
      row_buckets=geometric_buckets(s.min_rows, s.max_rows_bucket),
      length_buckets=geometric_buckets(min(s.min_length, longest), longest),
      row_multiple=s.micro_batch * mesh.size, windows=clf_cfg.windows,
      bag_tokens=clf_cfg.bag_tokens)
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(ps.ROWS_AXIS))
  arrays = {}
  for f in dataclasses.fields(rows):
    x = getattr(rows, f.name)
    sh = split if f.name.endswith(("_P", "_PxL")) else rep
    arrays[f.name] = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
  st = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
  R, L = rows.input_ids_PxL.shape
  return Program("classifier", ps._score_rows, (graphdef, st, arrays),  # pylint: disable=protected-access
                 dict(mode=clf_cfg.mode, micro_batch=s.micro_batch, num_groups=groups,
                      group_size=G, mesh=mesh),
                 note=f"{clf_cfg.mode.value}: {groups} groups x {G} -> {R} rows x {L} tokens "
                      f"on {mesh.size} local devices")


# ---- the reward model ----------------------------------------------------------------------------

def reward_program(graphdef: nnx.GraphDef, state: Any, rm_quality_cfg, num_seqs: int,
                   seq_tokens: int, mesh: Mesh) -> Program:
  """RewardModelQuality's call for `num_seqs` sequences in the bucket holding `seq_tokens`."""
  from darling_jax.rewards import reward_model_quality as rmq
  from darling_jax.sharding.rules import DEFAULT_RULES, activation_sharding, state_shardings

  buckets = rm_quality_cfg.buckets
  T = next((b for b in buckets if b >= seq_tokens), buckets[-1])
  spec = logical_to_spec(("batch",), DEFAULT_RULES, mesh)
  mult = 1
  for part in spec:
    for ax in ((part,) if isinstance(part, str) else part or ()):
      mult *= mesh.shape[ax]
  rows = max(num_seqs, rm_quality_cfg.min_rows_per_call)
  R = mult * rmq._next_pow2(-(-rows // mult))  # pylint: disable=protected-access
  tok = activation_sharding(mesh, DEFAULT_RULES, "batch", "length")
  args = (graphdef, rm_quality_cfg.label_index,
          abstract(state, state_shardings(state, mesh, DEFAULT_RULES)),
          jax.ShapeDtypeStruct((R, T), jnp.int32, sharding=tok),
          jax.ShapeDtypeStruct((R, T), jnp.int32, sharding=tok))
  return Program("reward", rmq._score_rows, args,  # pylint: disable=protected-access
                 note=f"{num_seqs} sequences -> {R} rows x {T} tokens on {mesh.size} device(s)")
