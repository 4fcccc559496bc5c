"""The training state pytree and the rollout batch the update step consumes.

Axis letters: B prompts, G rollouts per prompt, P prompt length (left-padded), N response length.
"""
# pylint: disable=invalid-name

from __future__ import annotations

from typing import Any

import flax.struct
import jax
from jaxtyping import Array, Bool, Float, Int


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the optimizer definition is static (not a leaf)."""

  step: Int[Array, ""]  # completed training steps
  params: Any  # trainable params: the policy's nnx.State, or LoRA adapters
  opt_state: Any
  rng: jax.Array  # base key; step t uses fold_in(rng, t), so a resumed run draws the same keys


@flax.struct.dataclass
class UpdateBatch:
  """One step's rollouts and their scores, as the update step reads them."""

  prompt_ids: Int[Array, "B P"]  # left-padded prompts (shared by the G rollouts of a group)
  prompt_mask: Bool[Array, "B P"]
  response_ids: Int[Array, "B G N"]
  response_mask: Bool[Array, "B G N"]  # valid generated tokens (up to and including the stop)
  old_logprobs: Float[Array, "B G N"]  # log pi_old of each token (what the sampler sampled from)
  quality: Float[Array, "B G"]
  equiv_probs: Float[Array, "B G G"] | None = None  # P(similar) from the classifier
  diversity: Float[Array, "B G"] | None = None  # or a precomputed plug-in diversity
  ref_logprobs: Float[Array, "B G N"] | None = None  # log pi_ref, only when beta > 0


@flax.struct.dataclass
class PackedBatch:
  """An UpdateBatch and where each of its tokens sits in the bucketed / packed layout.

  Made on the host by `rl.packing.BatchPacker` from lengths only. Index arrays [M, U, R, T] (M
  mini-batches, U micro-batches, R rows, T row length), int32, -1 / 0 = padding:
    src  flat index into the [B*G, P+N] table concat(prompt_ids[b], response_ids[b, g])
    tgt  flat index into the [B*G, N] response arrays of the token this column predicts
    seg  segment id within the row (0 = padding), pos: position within the segment
  All four are None for the padded layout (the step then reads `batch` as is).
  """

  batch: UpdateBatch
  src: Int[Array, "M U R T"] | None = None
  tgt: Int[Array, "M U R T"] | None = None
  seg: Int[Array, "M U R T"] | None = None
  pos: Int[Array, "M U R T"] | None = None
