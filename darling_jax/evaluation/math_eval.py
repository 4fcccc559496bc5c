"""Math evaluation on in-memory completions: per-problem pass@k / maj@k / length, and a summary.

Axis legend: P problems, N samples per problem.

    result = evaluate_math(completions_PxN, answers_P)     # default verifier: Math-Verify
    result.summary["pass@k"]["8"], result.per_problem[0]["num_correct"]

The same function serves `darling-jax eval` and the trainer's periodic evaluation.

Correctness is a quality function over whole groups (the `darling_jax.rewards` protocol:
`fn(prompts, completions, columns) -> [P, N]`, a sample is correct when its score > 0.5); the
default is the `math_verify` built-in (boxed answer vs the gold through Math-Verify, with time
limits). `from_pairwise` wraps a plain `(completion, gold) -> bool` callable. Answer keys for maj@k
come from `default_answer_key` (the final answer: boxed, "#### x", else the last number; plain
numbers normalised so "1,000" and "1000" vote together) or any `(completion) -> key | None`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from darling_jax.errors import InputError
from darling_jax.evaluation.pass_at_k import maj_at_k, pass_at_k, powers_of_two

AnswerKeyFn = Callable[[str], Hashable | None]
# fn(prompts [P], completions [P][N], columns) -> scores [P, N]; see darling_jax.rewards.protocol.
QualityFn = Callable[[Sequence[str], Sequence[Sequence[str]], Mapping[str, Sequence[Any]]],
                     Any]


def default_answer_key(completion: str) -> str | None:
  """The completion's final answer as a vote key: a normalised number, else whitespace-collapsed
  text; None when it states no answer."""
  from darling_jax.rewards import AnswerSource, extract_answer, normalize_number

  answer = extract_answer(completion, AnswerSource.LENIENT)
  if answer is None:
    return None
  return normalize_number(answer) or " ".join(answer.split())


def from_pairwise(is_correct: Callable[[str, str | None], bool],
                  answer_column: str = "answer") -> QualityFn:
  """A group quality function from a per-sample `(completion, gold) -> bool`."""

  def quality(prompts, completions, columns) -> Float[np.ndarray, "P N"]:
    del prompts
    golds = columns[answer_column]
    return np.asarray([[float(bool(is_correct(text, gold))) for text in group]
                       for group, gold in zip(completions, golds)], dtype=np.float32)

  quality.name = f"pairwise[{getattr(is_correct, '__name__', type(is_correct).__name__)}]"
  return quality


@dataclasses.dataclass(frozen=True)
class MathEvalResult:
  """`per_problem`: one JSON-ready dict per problem; `summary`: means over problems."""

  per_problem: list[dict[str, Any]]
  summary: dict[str, Any]


def _check_completions(completions: Sequence[Sequence[str]], num_problems: int) -> int:
  if len(completions) != num_problems:
    raise InputError("completions", f"{len(completions)} groups for {num_problems} problems")
  if not completions:
    raise InputError("completions", "no problems to evaluate")
  n = len(completions[0])
  for p, group in enumerate(completions):
    if isinstance(group, str) or len(group) != n:
      raise InputError(f"completions[{p}]", f"expected {n} samples like problem 0")
  if n < 1:
    raise InputError("completions", "need at least one sample per problem")
  return n


def evaluate_math(
    completions: Sequence[Sequence[str]],
    answers: Sequence[str | None],
    *,
    prompts: Sequence[str] | None = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
    quality: QualityFn | None = None,
    answer_key: AnswerKeyFn = default_answer_key,
    lengths: Sequence[Sequence[int]] | None = None,
    ks: Sequence[int] | None = None,
    maj: bool = True,
) -> MathEvalResult:
  """Scores N samples per problem; pass@k and maj@k for k = 1, 2, 4, ... <= N.

  Args:
    completions: [P][N] completion texts.
    answers: [P] gold answers (the dataset's "answer" column).
    prompts: [P] prompt texts, passed to the quality function (default: empty strings).
    columns: further dataset columns for the quality function (each of length P).
    quality: group correctness function (see module docstring); default `math_verify`.
    answer_key: completion -> maj@k vote key, None for "no answer".
    lengths: [P][N] response lengths in tokens; None: lengths in characters.
    ks: the k's to report (default powers of two <= N).
    maj: also compute maj@k (it costs ~0.1-1 s per problem at N = 256).

  Returns:
    MathEvalResult with per-problem records and the summary.
  """
  from darling_jax.rewards import builtin, score_groups

  n = _check_completions(completions, len(answers))
  ks = powers_of_two(n) if ks is None else sorted(set(int(k) for k in ks))
  if not ks or ks[0] < 1 or ks[-1] > n:
    raise InputError("ks", f"every k must be in [1, {n}], got {ks}")
  prompts = [""] * len(answers) if prompts is None else list(prompts)
  cols = {"answer": list(answers), **(columns or {})}
  own_quality = quality is None
  quality = builtin("math_verify") if own_quality else quality
  try:
    scores_PxN = score_groups(quality, prompts, completions, cols)
  finally:
    if own_quality:
      quality.close()
  correct_PxN = scores_PxN > 0.5
  if lengths is None:
    lengths_PxN, unit = np.asarray([[len(t) for t in g] for g in completions], np.float64), "chars"
  else:
    lengths_PxN, unit = np.asarray(lengths, dtype=np.float64), "tokens"
    if lengths_PxN.shape != correct_PxN.shape:
      raise InputError("lengths", f"shape {lengths_PxN.shape}, expected {correct_PxN.shape}")

  per_problem = []
  for p, group in enumerate(completions):
    c = int(correct_PxN[p].sum())
    record: dict[str, Any] = {
        "index": p, "answer": answers[p], "num_samples": n, "num_correct": c,
        "pass@k": {str(k): pass_at_k(n, c, k) for k in ks},
        "mean_length": float(lengths_PxN[p].mean()),
        "correct": [bool(v) for v in correct_PxN[p]],
    }
    if maj:
      keys = [answer_key(text) for text in group]
      record["maj@k"] = {str(k): maj_at_k(keys, correct_PxN[p], k) for k in ks}
      record["answer_keys"] = keys
    per_problem.append(record)

  def mean_over(metric: str) -> dict[str, float]:
    return {str(k): float(np.mean([r[metric][str(k)] for r in per_problem])) for k in ks}

  summary: dict[str, Any] = {
      "num_problems": len(per_problem), "num_samples": n, "ks": list(ks),
      "pass@k": mean_over("pass@k"),
      "accuracy": float(correct_PxN.mean()),
      "mean_length": float(lengths_PxN.mean()), "length_unit": unit,
  }
  if maj:
    summary["maj@k"] = mean_over("maj@k")
  return MathEvalResult(per_problem=per_problem, summary=summary)
