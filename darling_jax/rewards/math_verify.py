"""Math-Verify quality: q = 1 if the completion's final answer equals the gold answer, else 0.

DARLING's math runs score each rollout with Math-Verify equality with the gold answer (section 1.1
of the method); the authors' reward parses the whole completion (`AnswerSource.WHOLE`, the default:
Math-Verify over the completion's last 32k characters in a `DeadlinePool` worker, an exact boxed
plain-number match decided in-process). The boxed-only fast path (`AnswerSource.BOXED`), per
completion:

  1. Extract the final answer in-process (`math_answer.extract_answer`: bounded, linear, no eval).
     No answer, or one nested deeper than `MAX_ANSWER_NESTING` (12; MATH's golds nest at most 3
     deep, sympy can take forever on hundreds of levels) -> q = 0 without verification.
  2. Fast path, in-process, no sympy: if the answer and the gold are both plain numbers
     (`math_answer.parse_number`: "1,000", "-2.50", "3/4", "\\frac{14}{3}"), q = 1 when they are
     equal as exact fractions and q = 0 when they are distinct integers below 10^12 or more than
     1e-4 apart (relative). Closer values go on to step 3: Math-Verify compares after rounding
     (it calls 1/3 and 0.333333 equal) and the fast path must never disagree with it. Plain-number
     answers to GSM8K's integer golds never reach sympy.
  3. Otherwise `math_verify.verify(parse(gold), parse(answer))` in a `DeadlinePool` worker, with a
     hard per-answer time limit: past `timeout_s`, or if the worker crashes, q = 0 and the worker
     is replaced. Identical (gold, answer) pairs within a call are verified once.

Both sides are wrapped as `\\boxed{...}` before `parse`, so Math-Verify reads exactly the extracted
text. Math-Verify's own signal-based timeouts are disabled (they only work on a main thread and
cannot interrupt one long C call); the pool's deadline replaces them.

Gold formats (`GoldFormat`): ANSWER, the column holds the final answer (MATH's "answer": LaTeX;
AMC's floats); GSM8K, the column holds a worked solution ending in "#### 72"; BOXED, a worked
solution whose last `\\boxed{}` is the answer. A missing/empty gold gives q = 0 for that prompt and
a warning (one bad dataset row must not stop a run); a gold of the wrong type is an `InputError`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import numbers
import os
from typing import Any, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from darling_jax.errors import InputError
from darling_jax.rewards import math_answer
from darling_jax.rewards.deadline_pool import DeadlinePool, MapStats, PoolConfig, StartMethod
from darling_jax.rewards.protocol import check_batch

_log = logging.getLogger(__name__)
# Imported only in the verifier processes (importing it warms Math-Verify up).
_WORKER_MODULE = "darling_jax.rewards.verifier_process"


class GoldFormat(enum.Enum):
  """What the gold-answer column holds."""

  ANSWER = "answer"  # the final answer itself (MATH, AIME, AMC)
  GSM8K = "gsm8k"  # a GSM8K solution; the answer follows the last "####"
  BOXED = "boxed"  # a worked solution; the answer is its last \boxed{}


def _default_num_workers() -> int:
  # Half the cores, at most 8: the trainer's own host work (tokenising, data) needs the rest.
  return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclasses.dataclass(frozen=True)
class MathVerifyConfig:
  """Settings of `MathVerifyReward`.

  Attributes:
    answer_column: dataset column with the gold answer.
    gold_format: how to read the gold (see GoldFormat).
    answer_source: where to find the completion's answer. WHOLE (default) is the reference's
      reward: Math-Verify's own extraction over the completion's last 32k characters (an exact
      boxed match with a plain-number gold is decided in-process). BOXED, the fast path, reads
      the last `\\boxed{}` only; LENIENT also accepts "#### x" and, failing both, the last number.
    timeout_s: hard limit per verified answer, seconds. A typical MATH answer costs 15-30 ms of
      CPU, a first-of-its-kind one up to ~1 s on a loaded machine; 5 s is Math-Verify's own default.
    batch_timeout_s: hard limit per call (all B*G answers; a cold pool's first start-up excluded),
      seconds; None: per-answer limits only.
    num_workers: verifier processes; None: half the cores, at most 8.
    start_method: forkserver (default on POSIX) or spawn; never fork.
    memory_limit_mb: address-space cap per verifier process; None: uncapped.
  """

  answer_column: str = "answer"
  gold_format: GoldFormat = GoldFormat.ANSWER
  answer_source: math_answer.AnswerSource = math_answer.AnswerSource.WHOLE
  timeout_s: float = 5.0
  batch_timeout_s: float | None = None
  num_workers: int | None = None
  start_method: StartMethod | None = None
  memory_limit_mb: int | None = 2048

  def __post_init__(self):
    if not isinstance(self.answer_column, str) or not self.answer_column:
      raise InputError("MathVerifyConfig.answer_column",
                       f"must be a non-empty str, got {self.answer_column!r}")
    if not isinstance(self.gold_format, GoldFormat):
      raise InputError("MathVerifyConfig.gold_format",
                       f"must be one of {[f.value for f in GoldFormat]}, got {self.gold_format!r}")
    if not isinstance(self.answer_source, math_answer.AnswerSource):
      raise InputError(
          "MathVerifyConfig.answer_source",
          f"must be one of {[s.value for s in math_answer.AnswerSource]}, "
          f"got {self.answer_source!r}")
    self.pool_config()  # validates the pool fields, naming the bad one

  def pool_config(self) -> PoolConfig:
    kwargs = {}
    if self.start_method is not None:
      kwargs["start_method"] = self.start_method
    return PoolConfig(
        num_workers=_default_num_workers() if self.num_workers is None else self.num_workers,
        timeout_s=self.timeout_s, batch_timeout_s=self.batch_timeout_s,
        memory_limit_mb=self.memory_limit_mb,
        preload=(_WORKER_MODULE,), **kwargs)


def gold_answer(value: Any, gold_format: GoldFormat, where: str) -> str | None:
  """The gold final answer from one dataset cell, or None when the row has none.

  Raises:
    InputError: the cell is neither text nor a real number.
  """
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
    raise InputError(where, f"gold answer must be str or a number, got {type(value).__name__}")
  if not isinstance(value, str):  # e.g. AMC23 stores 27.0
    if not math.isfinite(value):
      return None
    value = str(int(value)) if float(value).is_integer() else repr(float(value))
  match gold_format:
    case GoldFormat.ANSWER:
      return math_answer.last_boxed(value) or value.strip() or None
    case GoldFormat.GSM8K:
      return math_answer.gsm8k_answer(value)
    case GoldFormat.BOXED:
      return math_answer.last_boxed(value)


# Math-Verify calls numbers equal after rounding to 6 decimals or at 15 significant digits. Values
# further apart than this relative gap, and distinct integers below 10^12, are unequal under any of
# its tolerances.
_FAST_PATH_REL_GAP = 1e-4
_FAST_PATH_MAX_INT = 10**12


def fast_path(gold: str, answer: str) -> float | None:
  """1.0 / 0.0 when both are plain numbers and the verdict is certain, else None (use the pool).

  Equal exact values: 1.0. Distinct integers below 10^12, or values more than 1e-4 apart relative
  to the larger magnitude (at least 1): 0.0. Anything closer (0.333333 vs 1/3, 20-digit
  near-equal integers) is left to Math-Verify, whose rounding rules decide it.
  """
  g, a = math_answer.parse_number(gold), math_answer.parse_number(answer)
  if g is None or a is None:
    return None
  if g == a:
    return 1.0
  big = max(abs(g), abs(a))
  if g.denominator == a.denominator == 1 and big < _FAST_PATH_MAX_INT:
    return 0.0
  if abs(g - a) > _FAST_PATH_REL_GAP * max(1, big):
    return 0.0
  return None


class MathVerifyReward:
  """Quality function: 1.0 where a completion's final answer equals the gold answer, else 0.0.

  Implements the QualityFn protocol (`darling_jax.rewards.protocol`); see the module docstring for
  the procedure. Worker processes start on the first call (or `start()`) and stop on `close()` or
  at exit.

  Example:
    reward = MathVerifyReward("answer", timeout_s=5.0)
    q_BxG = reward(prompts, completions_BxG, {"answer": golds})
  """

  def __init__(self, answer_column: str = "answer", *, name: str | None = None, **config: Any):
    """Args: answer_column and any other `MathVerifyConfig` field by keyword; name for logs."""
    try:
      self.config = MathVerifyConfig(answer_column=answer_column, **config)
    except TypeError as e:
      raise InputError("MathVerifyReward", str(e)) from None
    self.name = name or f"math_verify[{self.config.answer_column}]"
    whole = self.config.answer_source is math_answer.AnswerSource.WHOLE
    worker = "verify_whole" if whole else "verify_pair"
    self._pool = DeadlinePool(
        f"{_WORKER_MODULE}:{worker}", self.config.pool_config(), default=False)
    self.last_stats = MapStats()

  def start(self) -> None:
    """Starts the verifier processes now (otherwise the first call does)."""
    self._pool.start()

  def close(self) -> None:
    """Stops the verifier processes."""
    self._pool.close()

  def __enter__(self) -> MathVerifyReward:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Sequence[str]],
      columns: Mapping[str, Sequence[Any]],
  ) -> Float[np.ndarray, "B G"]:
    b_size, g_size = check_batch(prompts, completions, columns)
    cfg = self.config
    if cfg.answer_column not in columns:
      raise InputError(f"{self.name}: columns",
                       f"no column {cfg.answer_column!r} (have {sorted(columns)})")
    gold_column = columns[cfg.answer_column]
    whole = cfg.answer_source is math_answer.AnswerSource.WHOLE
    scores_BxG = np.zeros((b_size, g_size), np.float32)
    pending: dict[tuple[str, str], list[tuple[int, int]]] = {}
    missing = []
    for b in range(b_size):
      gold = gold_answer(gold_column[b], cfg.gold_format, f"columns[{cfg.answer_column!r}][{b}]")
      if gold is None:
        missing.append(b)
        continue
      for g, text in enumerate(completions[b]):
        answer = math_answer.extract_answer(text, cfg.answer_source)
        if whole:
          # Math-Verify reads the whole text, so only an exact boxed match is certain here.
          if answer is not None and fast_path(gold, answer) == 1.0:
            scores_BxG[b, g] = 1.0
          else:
            tail = text[-math_answer.MAX_SCAN_CHARS:]
            pending.setdefault((gold, tail), []).append((b, g))
          continue
        if answer is None or math_answer.nesting_depth(answer) > math_answer.MAX_ANSWER_NESTING:
          continue
        fast = fast_path(gold, answer)
        if fast is None:
          pending.setdefault((gold, answer), []).append((b, g))
        else:
          scores_BxG[b, g] = fast
    if missing:
      _log.warning("%s: no gold answer in %d row(s) (first: %d); their scores are 0",
                   self.name, len(missing), missing[0])
    pairs = list(pending)
    verdicts, self.last_stats = self._pool.map(pairs)
    for pair, verdict in zip(pairs, verdicts):
      if verdict is True:
        for b, g in pending[pair]:
          scores_BxG[b, g] = 1.0
    return scores_BxG


def gsm8k_reward(answer_column: str = "answer", **config: Any) -> MathVerifyReward:
  """MathVerifyReward for GSM8K: gold after "####"; answer boxed, else "#### x", else last number.
  """
  config.setdefault("gold_format", GoldFormat.GSM8K)
  config.setdefault("answer_source", math_answer.AnswerSource.LENIENT)
  config.setdefault("name", f"gsm8k[{answer_column}]")
  return MathVerifyReward(answer_column, **config)
