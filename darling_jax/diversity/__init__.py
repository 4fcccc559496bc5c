"""Diversity of a group of rollouts: equivalence partitions, DARLING's diversity score, n-grams."""

from darling_jax.diversity.ngram import ngram_diversity
from darling_jax.diversity.partition import (
    class_sizes,
    diversity_scores,
    equivalence_from_probs,
    greedy_classes,
    num_classes,
    union_find_classes,
)

__all__ = [
    "class_sizes",
    "diversity_scores",
    "equivalence_from_probs",
    "greedy_classes",
    "ngram_diversity",
    "num_classes",
    "union_find_classes",
]
