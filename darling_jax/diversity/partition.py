"""Partitions of a group of G rollouts into equivalence classes, and the DARLING diversity score.

Axis legend: B groups (prompts), G rollouts per group.

Every function here is pure, static-shaped and jittable: the update step calls them inside one
jitted program, so there is no host round-trip and no data-dependent Python control flow.

Class ids: every partition function returns `classes_BxG[b, i]` = the smallest member index of
rollout i's class (so the representative of a class has `classes[b, i] == i`). Both partitions
(union-find and greedy) use this convention, which makes their outputs directly comparable.

Validity mask: `valid_BxG[b, i] = False` marks padding rollouts (groups with fewer than G real
members). A padding rollout is never equivalent to anything: it forms its own singleton class, is
not counted in any real member's class size or in `num_classes`, and gets diversity 0.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from darling_jax.errors import InputError


def _check_square(x: Array, what: str) -> tuple[int, int]:
  if x.ndim != 3 or x.shape[1] != x.shape[2]:
    raise InputError(what, f"expected shape [B, G, G], got {tuple(x.shape)}")
  return x.shape[0], x.shape[1]


def _valid_or_all(valid: Bool[Array, "B G"] | None, shape: tuple[int, int]) -> Bool[Array, "B G"]:
  if valid is None:
    return jnp.ones(shape, dtype=jnp.bool_)
  chex.assert_shape(valid, shape)
  return valid.astype(jnp.bool_)


def _eye(g: int) -> Bool[Array, "1 G G"]:
  return jnp.eye(g, dtype=jnp.bool_)[None]


def equivalence_from_probs(
    probs_BxGxG: Float[Array, "B G G"], threshold: float | Float[Array, ""]
) -> Bool[Array, "B G G"]:
  """Thresholds pair probabilities into a symmetric equivalence (adjacency) matrix.

  equiv[b, i, j] = p[b, min(i, j), max(i, j)] > tau for i != j, and equiv[b, i, i] = True.

  Only the strict upper triangle (i < j) is read and mirrored, so the result is symmetric even when
  the scorer fills the two triangles differently (e.g. it scored (y_i, y_j) and (y_j, y_i) with an
  order-sensitive classifier); a scorer that wants both orders should average them beforehand.
  The comparison is strict (p > tau), as in the paper and the reference code.

  Args:
    probs_BxGxG: P(similar | y_i, y_j) per ordered pair; diagonal and lower triangle are ignored.
    threshold: tau (0.32 for the ModernBERT classifier, 0.5 for the math classifier).

  Returns:
    Boolean [B, G, G] symmetric matrix with a True diagonal.
  """
  _, g = _check_square(probs_BxGxG, "equivalence_from_probs: probs")
  upper_1xGxG = jnp.triu(jnp.ones((g, g), dtype=jnp.bool_), k=1)[None]
  mirrored_BxGxG = jnp.where(upper_1xGxG, probs_BxGxG, jnp.swapaxes(probs_BxGxG, 1, 2))
  return (mirrored_BxGxG > threshold) | _eye(g)


def _adjacency(equiv_BxGxG: Bool[Array, "B G G"], valid: Bool[Array, "B G"] | None, what: str):
  """Undirected adjacency with self-loops, padding rollouts isolated."""
  b, g = _check_square(equiv_BxGxG, what)
  valid_BxG = _valid_or_all(valid, (b, g))
  pair_valid_BxGxG = valid_BxG[:, :, None] & valid_BxG[:, None, :]
  return (equiv_BxGxG.astype(jnp.bool_) & pair_valid_BxGxG) | _eye(g)


def closure_steps(g: int) -> int:
  """Squarings of (I + E) needed to reach every path in a G-node graph: ceil(log2(G - 1))."""
  return max(0, math.ceil(math.log2(max(g - 1, 1))))


def union_find_classes(
    equiv_BxGxG: Bool[Array, "B G G"], valid: Bool[Array, "B G"] | None = None
) -> Int[Array, "B G"]:
  """Connected components of the equivalence graph: DARLING's training partition.

  Transitive closure, so a ~ b and b ~ c puts a, b, c in one class even if a !~ c. The graph is
  treated as undirected (an edge in either triangle joins the pair), matching union-find over the
  pairs (i, j) the reference code unions.

  Method: reachability R = (I | E | E^T), squared ceil(log2(G - 1)) times (R <- R @ R > 0). After k
  squarings R holds every path of length <= 2^k, and a simple path has at most G - 1 edges, so the
  result is exact for every G (the step count is derived from the static G; the 0/1 products are
  summed in float32, exact for G < 2^24). Cost: O(G^3 log G) per group as batched matmuls, e.g.
  G = 64 is 6 squarings of a 64 x 64 matrix. Then class(i) = min{j : R[i, j]} (argmax returns the
  first True).

  Args:
    equiv_BxGxG: boolean equivalence per pair (diagonal ignored).
    valid: optional [B, G] mask; padding rollouts become singletons.

  Returns:
    int32 [B, G], each entry the smallest member index of its class.
  """
  adj_BxGxG = _adjacency(equiv_BxGxG, valid, "union_find_classes: equiv")
  g = adj_BxGxG.shape[-1]
  reach_BxGxG = adj_BxGxG | jnp.swapaxes(adj_BxGxG, 1, 2)

  def square(_, reach):
    f = reach.astype(jnp.float32)
    paths = jnp.einsum("bij,bjk->bik", f, f, preferred_element_type=jnp.float32)
    return paths > 0.5

  reach_BxGxG = jax.lax.fori_loop(0, closure_steps(g), square, reach_BxGxG)
  return jnp.argmax(reach_BxGxG, axis=-1).astype(jnp.int32)


def greedy_classes(
    equiv_BxGxG: Bool[Array, "B G G"], valid: Bool[Array, "B G"] | None = None
) -> Int[Array, "B G"]:
  """NoveltyBench's greedy evaluation partition (no transitive closure).

  For i = 0 .. G-1: compare i only with the representative (first member) of each existing class,
  in order of creation; join the first class whose representative rep has equiv[b, rep, i]
  (rep < i, so only the upper triangle is read), else open a new class with i as representative.
  Classes are created in increasing index order, so "first created" = smallest representative
  index, and a class id is its representative's index.

  Args:
    equiv_BxGxG: boolean equivalence per pair; entry [b, rep, i] with rep < i is used.
    valid: optional [B, G] mask; padding rollouts become singletons.

  Returns:
    int32 [B, G], each entry the representative (= smallest member) index of its class.
  """
  adj_BxGxG = _adjacency(equiv_BxGxG, valid, "greedy_classes: equiv")
  b, g = adj_BxGxG.shape[:2]
  index_1xG = jnp.arange(g, dtype=jnp.int32)[None]

  def assign(i, classes_BxG):
    # Unassigned entries hold -1, so only already-processed representatives (j < i) match.
    is_rep_BxG = classes_BxG == index_1xG
    candidate_BxG = is_rep_BxG & jax.lax.dynamic_index_in_dim(adj_BxGxG, i, axis=2, keepdims=False)
    joined_B = jnp.any(candidate_BxG, axis=-1)
    first_rep_B = jnp.argmax(candidate_BxG, axis=-1).astype(jnp.int32)
    return classes_BxG.at[:, i].set(jnp.where(joined_B, first_rep_B, i))

  return jax.lax.fori_loop(0, g, assign, jnp.full((b, g), -1, dtype=jnp.int32))


def _same_class(classes_BxG: Int[Array, "B G"], valid: Bool[Array, "B G"] | None):
  chex.assert_rank(classes_BxG, 2)
  valid_BxG = _valid_or_all(valid, classes_BxG.shape)
  same_BxGxG = classes_BxG[:, :, None] == classes_BxG[:, None, :]
  return same_BxGxG & valid_BxG[:, :, None] & valid_BxG[:, None, :], valid_BxG


def class_sizes(
    classes_BxG: Int[Array, "B G"], valid: Bool[Array, "B G"] | None = None
) -> Int[Array, "B G"]:
  """|class(i)|: the number of valid rollouts sharing i's class id (0 for padding rollouts)."""
  same_BxGxG, _ = _same_class(classes_BxG, valid)
  return jnp.sum(same_BxGxG, axis=-1, dtype=jnp.int32)


def num_classes(
    classes_BxG: Int[Array, "B G"], valid: Bool[Array, "B G"] | None = None
) -> Int[Array, "B"]:
  """Number of distinct classes among valid rollouts (NoveltyBench's "distinct").

  Counts first occurrences, so any labelling works, not only smallest-member ids.
  """
  same_BxGxG, valid_BxG = _same_class(classes_BxG, valid)
  g = classes_BxG.shape[-1]
  earlier_1xGxG = jnp.tril(jnp.ones((g, g), dtype=jnp.bool_), k=-1)[None]
  seen_before_BxG = jnp.any(same_BxGxG & earlier_1xGxG, axis=-1)
  return jnp.sum(valid_BxG & ~seen_before_BxG, axis=-1, dtype=jnp.int32)


def diversity_scores(
    classes_BxG: Int[Array, "B G"],
    floor: float = 0.1,
    valid: Bool[Array, "B G"] | None = None,
) -> Float[Array, "B G"]:
  """DARLING's normalised diversity: div_i = max((G - |class(i)|) / (G - 1), floor).

  The fraction of the *other* rollouts that lie outside i's class, floored at 0.1 (the paper's
  Norm(.)) so a rollout whose whole group collapsed into one class keeps some reward. Worked
  example (G = 4, two jokes in one class, two singletons): div = (2/3, 2/3, 1, 1).

  With `valid`, G is the number of valid rollouts in the group (G_b); padding rollouts get 0, and a
  group with a single valid rollout (0 / 0) gets `floor`.

  Args:
    classes_BxG: class ids from `union_find_classes` (training) or `greedy_classes`.
    floor: lower bound of the score.
    valid: optional [B, G] mask.

  Returns:
    float32 [B, G].
  """
  sizes_BxG = class_sizes(classes_BxG, valid).astype(jnp.float32)
  valid_BxG = _valid_or_all(valid, classes_BxG.shape)
  g_Bx1 = jnp.sum(valid_BxG, axis=-1, keepdims=True, dtype=jnp.int32).astype(jnp.float32)
  frac_BxG = (g_Bx1 - sizes_BxG) / jnp.maximum(g_Bx1 - 1.0, 1.0)
  div_BxG = jnp.maximum(frac_BxG, jnp.float32(floor))
  return jnp.where(valid_BxG, div_BxG, 0.0).astype(jnp.float32)
