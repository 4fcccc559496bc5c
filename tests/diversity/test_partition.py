"""Partitions and diversity scores vs plain-Python union-find / greedy, hand cases, symmetries."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darling_jax.diversity import (
    class_sizes,
    diversity_scores,
    equivalence_from_probs,
    greedy_classes,
    num_classes,
    union_find_classes,
)
from darling_jax.errors import InputError

_REF = pathlib.Path(__file__).resolve().parents[1] / "rl" / "numpy_reference.py"
import testing_support.numpy_rl_reference as ref

# Everything runs jitted (as in the update step); eager op-by-op dispatch is ~10x slower on CPU.
uf_jit = jax.jit(union_find_classes)
greedy_jit = jax.jit(greedy_classes)
sizes_jit = jax.jit(class_sizes)
count_jit = jax.jit(num_classes)
div_jit = jax.jit(diversity_scores, static_argnames="floor")
equiv_jit = jax.jit(equivalence_from_probs)


def _sym(edges, g):
  e = np.eye(g, dtype=bool)
  for i, j in edges:
    e[i, j] = e[j, i] = True
  return e


def _random_graphs(rng, g, densities, reps, symmetric=True):
  """Erdos-Renyi graphs, `reps` per density, stacked along B (directed if not `symmetric`)."""
  out = []
  for p in densities:
    for _ in range(reps):
      edges = rng.random((g, g)) < p
      if symmetric:
        edges = np.triu(edges, k=1)
        edges = edges | edges.T
      out.append(edges | np.eye(g, dtype=bool))
  return np.stack(out)


def test_equivalence_from_probs_reads_upper_triangle_strictly():
  probs = np.array([[[0.0, 0.6, 0.5], [0.0, 0.0, 0.2], [0.9, 0.9, 0.0]]], np.float32)
  expected = np.array([[[1, 1, 0], [1, 1, 0], [0, 0, 1]]], bool)  # 0.5 is not > 0.5
  np.testing.assert_array_equal(equiv_jit(jnp.asarray(probs), 0.5), expected)


def test_chain_union_find_and_greedy_differ():
  equiv = _sym([(0, 1), (1, 2)], 3)[None]  # a~b, b~c, a!~c
  np.testing.assert_array_equal(uf_jit(equiv), [[0, 0, 0]])
  np.testing.assert_array_equal(greedy_jit(equiv), [[0, 0, 2]])
  np.testing.assert_array_equal(count_jit(uf_jit(equiv)), [1])
  np.testing.assert_array_equal(count_jit(greedy_jit(equiv)), [2])


def test_hand_cases():
  # {0,2} and a chain 1~3~4 (1 !~ 4): union-find joins 1,3,4; greedy opens a class at 4.
  equiv = _sym([(0, 2), (1, 3), (3, 4)], 5)[None]
  np.testing.assert_array_equal(uf_jit(equiv), [[0, 1, 0, 1, 1]])
  np.testing.assert_array_equal(greedy_jit(equiv), [[0, 1, 0, 1, 4]])
  np.testing.assert_array_equal(sizes_jit(uf_jit(equiv)), [[2, 3, 2, 3, 3]])
  np.testing.assert_array_equal(sizes_jit(greedy_jit(equiv)), [[2, 2, 2, 2, 1]])
  # 2 matches both representatives 0 and 1: greedy joins the first created class.
  equiv = _sym([(0, 2), (1, 2)], 3)[None]
  np.testing.assert_array_equal(greedy_jit(equiv), [[0, 1, 0]])
  np.testing.assert_array_equal(uf_jit(equiv), [[0, 0, 0]])


def test_greedy_reads_rep_row_union_find_is_undirected():
  equiv = np.eye(2, dtype=bool)
  equiv[1, 0] = True  # only the lower triangle: equiv[rep=0, i=1] is False
  np.testing.assert_array_equal(greedy_jit(equiv[None]), [[0, 1]])
  np.testing.assert_array_equal(uf_jit(equiv[None]), [[0, 0]])


def test_paper_worked_example_and_extremes():
  jokes = _sym([(0, 1)], 4)  # two jokes in one class + two singletons
  same = np.ones((4, 4), bool)
  none = np.eye(4, dtype=bool)
  classes = uf_jit(jnp.asarray(np.stack([jokes, same, none])))
  np.testing.assert_array_equal(classes, [[0, 0, 2, 3], [0, 0, 0, 0], [0, 1, 2, 3]])
  np.testing.assert_allclose(
      div_jit(classes),
      [[2 / 3, 2 / 3, 1, 1], [0.1, 0.1, 0.1, 0.1], [1, 1, 1, 1]], rtol=1e-6)
  np.testing.assert_array_equal(count_jit(classes), [3, 1, 4])
  np.testing.assert_allclose(div_jit(classes, floor=0.0)[1], [0, 0, 0, 0])


@jax.jit
def _everything(equiv, valid):
  """Both partitions and their statistics in one program (one compile per G)."""
  uf, gr = union_find_classes(equiv, valid), greedy_classes(equiv, valid)
  stats = [(diversity_scores(c, 0.1, valid), num_classes(c, valid)) for c in (uf, gr)]
  return uf, gr, stats


@pytest.mark.parametrize("g", [2, 3, 7, 16, 33, 64])
def test_random_graphs_match_python_references(g):
  rng = np.random.default_rng(g)
  densities = [0.0, 0.5 / g, 1.0 / g, 2.0 / g, 0.1, 0.3, 0.7, 1.0]
  # Directed graphs too: greedy must read equiv[rep, i], union-find either direction.
  equiv = np.concatenate([_random_graphs(rng, g, densities, reps=2),
                          _random_graphs(rng, g, densities, reps=1, symmetric=False)])
  b = equiv.shape[0]
  valid = np.ones((b, g), bool)
  valid[b // 2 :] = rng.random((b - b // 2, g)) < 0.8  # second half: some padding rollouts
  valid[:, 0] = True
  uf, gr, stats = jax.tree.map(np.asarray, _everything(equiv, valid))
  for k in range(b):
    for name, got, reference, (div, distinct) in (
        ("union-find", uf, ref.union_find, stats[0]), ("greedy", gr, ref.greedy, stats[1])):
      expected = reference(equiv[k], valid[k])
      np.testing.assert_array_equal(got[k], expected, err_msg=f"{name} graph {k}")
      np.testing.assert_allclose(div[k], ref.diversity(expected, 0.1, valid[k]), atol=1e-6)
      assert distinct[k] == ref.distinct(expected, valid[k]), f"{name} graph {k}"


@pytest.mark.parametrize("g", [64, 100])
def test_long_path_is_one_class(g):
  # A Hamiltonian path in random order: the longest shortest path, G - 1 edges.
  order = np.random.default_rng(0).permutation(g)
  equiv = _sym(list(zip(order[:-1], order[1:])), g)[None]
  np.testing.assert_array_equal(uf_jit(equiv), np.zeros((1, g), np.int32))


def _same_class(classes):
  return classes[:, :, None] == classes[:, None, :]


def test_union_find_is_permutation_equivariant():
  rng = np.random.default_rng(1)
  g = 12
  equiv = _random_graphs(rng, g, [0.05, 0.1, 0.2], reps=4)
  perm = rng.permutation(g)
  permuted = equiv[:, perm][:, :, perm]
  same = np.asarray(_same_class(uf_jit(equiv)))
  same_permuted = np.asarray(_same_class(uf_jit(permuted)))
  np.testing.assert_array_equal(same_permuted, same[:, perm][:, :, perm])
  assert not same.all()  # the graphs have several classes


def test_greedy_equals_union_find_and_is_equivariant_on_transitive_graphs():
  rng = np.random.default_rng(2)
  g = 10
  labels = rng.integers(0, 4, size=(6, g))  # disjoint cliques: an equivalence relation
  equiv = labels[:, :, None] == labels[:, None, :]
  np.testing.assert_array_equal(greedy_jit(equiv), uf_jit(equiv))
  perm = rng.permutation(g)
  permuted = equiv[:, perm][:, :, perm]
  same = np.asarray(_same_class(greedy_jit(equiv)))
  np.testing.assert_array_equal(
      np.asarray(_same_class(greedy_jit(permuted))), same[:, perm][:, :, perm])


def test_invariant_to_group_order():
  rng = np.random.default_rng(3)
  equiv = _random_graphs(rng, 8, [0.1, 0.3], reps=3)
  order = rng.permutation(equiv.shape[0])
  for fn in (uf_jit, greedy_jit):
    np.testing.assert_array_equal(fn(equiv[order]), np.asarray(fn(equiv))[order])


def test_jit_equals_no_jit():
  rng = np.random.default_rng(4)
  equiv = _random_graphs(rng, 5, [0.2, 0.4], reps=1)
  valid = rng.random(equiv.shape[:2]) < 0.9
  jitted = [np.asarray(fn(equiv, valid)) for fn in (uf_jit, greedy_jit)]
  with jax.disable_jit():
    eager = [np.asarray(fn(equiv, valid)) for fn in (union_find_classes, greedy_classes)]
  for a, b in zip(jitted, eager):
    np.testing.assert_array_equal(a, b)


def test_padding_rollouts_are_isolated():
  equiv = np.ones((1, 4, 4), bool)
  valid = np.array([[True, False, True, True]])
  classes = uf_jit(equiv, valid)
  np.testing.assert_array_equal(classes, [[0, 1, 0, 0]])
  np.testing.assert_array_equal(greedy_jit(equiv, valid), [[0, 1, 0, 0]])
  np.testing.assert_array_equal(sizes_jit(classes, valid), [[3, 0, 3, 3]])
  np.testing.assert_array_equal(count_jit(classes, valid), [1])
  np.testing.assert_allclose(div_jit(classes, 0.1, valid), [[0.1, 0, 0.1, 0.1]])
  single = np.array([[True, False, False, False]])
  np.testing.assert_allclose(div_jit(classes, 0.1, single), [[0.1, 0, 0, 0]])


def test_bad_shape_names_the_input():
  with pytest.raises(InputError, match="union_find_classes"):
    union_find_classes(jnp.ones((2, 3, 4), bool))
  with pytest.raises(InputError, match="probs"):
    equivalence_from_probs(jnp.ones((3, 3)), 0.5)
