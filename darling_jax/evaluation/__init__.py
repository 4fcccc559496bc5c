"""Evaluation: pass@k / maj@k for math, NoveltyBench distinct / utility, and the eval runner.

Everything works on in-memory completions, so the trainer's periodic evaluation and
`darling-jax eval` share one code path:
  pass_at_k(n, c, k), maj_at_k(keys, correct, k), powers_of_two(n)   pass_at_k.py
  evaluate_math(completions_PxN, answers_P, ...) -> MathEvalResult      math_eval.py
  evaluate_novelty(prompts_B, generations_BxG, ...) -> NoveltyEvalResult novelty.py
  plot_pass_at_k(curves, path)                                          plots.py
  EvalConfig, run_eval(config)                                          runner.py (the CLI's)
"""

from darling_jax.evaluation.math_eval import (
    MathEvalResult, default_answer_key, evaluate_math, from_pairwise)
from darling_jax.evaluation.novelty import (
    NoveltyEvalResult, evaluate_novelty, exact_match_equivalence, novelty_metrics)
from darling_jax.evaluation.pass_at_k import maj_at_k, pass_at_k, powers_of_two
from darling_jax.evaluation.plots import plot_pass_at_k
from darling_jax.evaluation.runner import EvalConfig, run_eval

__all__ = [
    "EvalConfig", "MathEvalResult", "NoveltyEvalResult", "default_answer_key", "evaluate_math",
    "evaluate_novelty", "exact_match_equivalence", "from_pairwise", "maj_at_k", "novelty_metrics",
    "pass_at_k", "plot_pass_at_k", "powers_of_two", "run_eval",
]
