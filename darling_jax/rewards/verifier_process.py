"""Math-Verify as run inside `DeadlinePool` worker processes (never imported by the trainer).

IMPORTING THIS MODULE WARMS MATH-VERIFY UP: it imports sympy and the LaTeX parser and verifies a
dozen representative answer pairs (tuples, intervals, matrices, units, percent, text), which costs
2-5 s once. A fresh process would otherwise pay 0.3-0.9 s on each of its first few answers of a
new kind (lazy sympy imports, parser caches), enough to trip a short per-answer deadline. Because
the fork server preloads this module (`PoolConfig.preload`), every worker, including one that
replaces a killed worker, is forked already warm, in milliseconds.
"""

from __future__ import annotations

import functools
import logging

import math_verify
from math_verify import ExprExtractionConfig, LatexExtractionConfig

# Per-answer warnings ("Timeout during parsing", parse errors) would flood the log; outcomes are
# reported to the parent instead.
logging.getLogger("math_verify").setLevel(logging.CRITICAL)
logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)

_WARM_UP_PAIRS = (
    ("\\frac{1}{2}", "0.5"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("p - q", "p-q"), ("\\text{Evelyn}", "Evelyn"), ("3\\sqrt{13}", "\\sqrt{117}"),
    ("6 - 5i", "6-5i"), ("90^\\circ", "90"), ("[5.8,6)", "[5.8, 6)"), ("x=5", "5"),
    ("50\\%", "0.5"), ("\\{1,2\\}", "1, 2"), ("x^2+1", "1+x^2"), ("(-\\infty, 3]", "x \\le 3"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"),
)


@functools.lru_cache(maxsize=4096)
def _parse_gold(text: str):
  # Golds repeat G times per prompt and again every epoch.
  return math_verify.parse("\\boxed{" + text + "}", parsing_timeout=None)


def verify_pair(pair: tuple[str, str]) -> bool:
  """Math-Verify equivalence of (gold, answer), both bare answers (no `\\boxed`, no `$`).

  Math-Verify's own signal-based timeouts are off (`None`): the pool's hard deadline replaces them.
  """
  gold, answer = pair
  answer_parsed = math_verify.parse("\\boxed{" + answer + "}", parsing_timeout=None)
  return bool(math_verify.verify(_parse_gold(gold), answer_parsed, timeout_seconds=None))


# The authors' reward (verl's `math_verify.compute_score`): the gold read as LaTeX from
# `\\boxed{gold}`, the prediction by expression and LaTeX extraction over the whole output.
_GOLD_CONFIG = (LatexExtractionConfig(),)
_WHOLE_CONFIG = (ExprExtractionConfig(), LatexExtractionConfig())


@functools.lru_cache(maxsize=4096)
def _parse_gold_latex(text: str):
  return math_verify.parse("\\boxed{" + text + "}", extraction_config=_GOLD_CONFIG,
                           parsing_timeout=None)


def verify_whole(pair: tuple[str, str]) -> bool:
  """Math-Verify equivalence of (gold answer, whole completion text), as the reference scores."""
  gold, text = pair
  parsed = math_verify.parse(text, extraction_config=_WHOLE_CONFIG, parsing_timeout=None)
  return bool(math_verify.verify(_parse_gold_latex(gold), parsed, timeout_seconds=None))


def _warm_up() -> None:
  for pair in _WARM_UP_PAIRS:
    verify_pair(pair)
    verify_whole((pair[0], f"So the answer is $\\boxed{{{pair[1]}}}$."))
  _parse_gold_latex.cache_clear()
  _parse_gold.cache_clear()


_warm_up()
