"""MathVerifyReward on real MATH-500 / GSM8K rows, the numeric fast path, and hang recovery."""

import json
import logging
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.rewards.math_answer import AnswerSource
from darling_jax.rewards.math_verify import (
    GoldFormat, MathVerifyReward, fast_path, gold_answer, gsm8k_reward)

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Generous per-answer limit: a loaded 2-core machine can take >1 s on a first-of-its-kind answer.
TIMEOUT_S = 10.0

# Real MATH-500 gold answers with a hand-made wrong answer each (close, but not equivalent).
MATH_WRONG = {
    r"\left( 3, \frac{\pi}{2} \right)": r"(3, \pi)",
    "p - q": "q - p",
    r"\frac{14}{3}": r"\frac{3}{14}",
    r"3\sqrt{13}": r"\sqrt{13}",
    "6 - 5i": "6 + 5i",
    "x=5": "x=-5",
    "3, 5, 7": "3, 5",
    r"\text{Evelyn}": r"\text{Bob}",
    r"90^\circ": r"45^\circ",
    "52_8": "53_8",
}


def _rows(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    pytest.skip(f"dataset not found: {path} (tests expect <repo>/../shared/data)")
  return [json.loads(line) for line in path.read_text().splitlines()]


def _reformat(gold: str) -> str:
  """The same answer written differently: \\dfrac, no \\left/\\right, no spaces."""
  s = gold.replace(r"\frac", r"\dfrac").replace(r"\left", "").replace(r"\right", "")
  return s if r"\text" in s else re.sub(r"\s+", "", s)


@pytest.fixture(scope="module")
def math_reward():
  with MathVerifyReward("answer", timeout_s=TIMEOUT_S, num_workers=2,
                        answer_source=AnswerSource.BOXED) as reward:
    yield reward


def _reference_whole(gold: str, text: str) -> float:
  """The authors' reward (verl `math_verify.compute_score`), computed directly in this process."""
  import math_verify  # pylint: disable=import-outside-toplevel
  from math_verify import ExprExtractionConfig, LatexExtractionConfig  # noqa: E501 pylint: disable=import-outside-toplevel
  g = math_verify.parse("\\boxed{" + gold + "}", extraction_config=(LatexExtractionConfig(),))
  p = math_verify.parse(text, extraction_config=(ExprExtractionConfig(), LatexExtractionConfig()))
  return float(math_verify.verify(g, p))


def test_whole_answer_is_the_default_and_matches_the_reference():
  rows = [r for r in _rows(DATA / "math500" / "test.jsonl") if r["answer"] in MATH_WRONG][:6]
  golds = [r["answer"] for r in rows]
  completions = [[
      f"Putting it together, the answer is $\\boxed{{{gold}}}$.",
      f"So we find ${_reformat(gold)}$.",  # unboxed: only the whole-text reward can see it
      f"Therefore \\boxed{{{MATH_WRONG[gold]}}}.",
      f"First I thought ${gold}$ but it is \\boxed{{{MATH_WRONG[gold]}}}.",
      "I could not solve it.",
  ] for gold in golds]
  with MathVerifyReward("answer", timeout_s=TIMEOUT_S, num_workers=1) as reward:
    assert reward.config.answer_source is AnswerSource.WHOLE
    scores_BxG = reward([r["problem"] for r in rows], completions, {"answer": golds})
  expected = np.array([[_reference_whole(g, t) for t in ts] for g, ts in zip(golds, completions)])
  np.testing.assert_array_equal(scores_BxG, expected, err_msg=str(golds))
  assert expected[:, 0].all() and not expected[:, 2].any()  # the reference itself is sane
  assert expected[:, 1].sum() > 0  # and it credits unboxed answers, which BOXED never does


def test_math500_rows(math_reward):
  rows = [r for r in _rows(DATA / "math500" / "test.jsonl") if r["answer"] in MATH_WRONG]
  assert len(rows) >= 8, "expected MATH-500 rows not found"
  golds = [r["answer"] for r in rows]
  completions = [[
      f"Putting it together, the answer is $\\boxed{{{gold}}}$.",
      f"Hence $\\boxed{{{_reformat(gold)}}}$",
      f"Therefore \\boxed{{{MATH_WRONG[gold]}}}.",
      "I could not solve it.",
  ] for gold in golds]
  scores_BxG = math_reward([r["problem"] for r in rows], completions, {"answer": golds})
  expected = np.tile(np.array([1, 1, 0, 0], np.float32), (len(rows), 1))
  np.testing.assert_array_equal(scores_BxG, expected, err_msg=str(golds))
  assert math_reward.last_stats.timed_out == 0 and math_reward.last_stats.crashed == 0


def test_math500_numeric_rows_use_the_fast_path(math_reward):
  rows = [r for r in _rows(DATA / "math500" / "test.jsonl")
          if re.fullmatch(r"-?\d+", r["answer"])][:16]
  golds = [r["answer"] for r in rows]
  completions = [[f"\\boxed{{{g}}}", f"\\boxed{{{int(g):,}.0}}", f"\\boxed{{{int(g) + 1}}}"]
                 for g in golds]
  scores_BxG = math_reward([r["problem"] for r in rows], completions, {"answer": golds})
  np.testing.assert_array_equal(scores_BxG, np.tile([1, 1, 0], (len(rows), 1)))
  assert math_reward.last_stats.items == 0  # no sympy needed


def test_gsm8k_rows():
  rows = _rows(DATA / "gsm8k" / "test.jsonl")[:12]
  golds = [int(r["answer"].split("####")[-1].replace(",", "")) for r in rows]
  completions = [[
      f"Step by step... so the total is {n}.\n#### {n}",
      f"The answer is $\\boxed{{{n:,}}}$.",
      f"We get {n + 3} and then {n}.",  # lenient: last number
      f"#### {n + 1}",
      "no idea",
  ] for n in golds]
  with gsm8k_reward(timeout_s=TIMEOUT_S, num_workers=1) as reward:
    scores_BxG = reward([r["question"] for r in rows], completions,
                        {"answer": [r["answer"] for r in rows]})
    assert reward.last_stats.items == 0  # integers: all decided in-process
  np.testing.assert_array_equal(scores_BxG, np.tile([1, 1, 1, 0, 0], (len(rows), 1)))


def test_boxed_only_ignores_unboxed_answers(math_reward):
  scores_BxG = math_reward(["p"], [["#### 7", "the answer is 7", r"\boxed{7}"]], {"answer": ["7"]})
  np.testing.assert_array_equal(scores_BxG, [[0, 0, 1]])


def test_amc_float_golds(math_reward):
  scores_BxG = math_reward(["p", "q"], [[r"\boxed{27}", r"\boxed{28}"], [r"\boxed{0.5}", "x"]],
                           {"answer": [27.0, 0.5]})
  np.testing.assert_array_equal(scores_BxG, [[1, 0], [1, 0]])


def test_identical_answers_are_verified_once(math_reward):
  completions = [[r"\boxed{\sqrt{2}}"] * 8, [r"\boxed{\sqrt{2}}"] * 4 + [r"\boxed{2}"] * 4]
  scores_BxG = math_reward(["p", "q"], completions, {"answer": [r"\sqrt{2}", r"\sqrt{2}"]})
  np.testing.assert_array_equal(scores_BxG, [[1] * 8, [1] * 4 + [0] * 4])
  assert math_reward.last_stats.items == 2  # (sqrt2, sqrt2) and (sqrt2, 2)


def test_missing_gold_scores_zero_with_warning(math_reward, caplog):
  with caplog.at_level(logging.WARNING):
    scores_BxG = math_reward(["p", "q"], [[r"\boxed{1}"], [r"\boxed{1}"]], {"answer": [None, "1"]})
  np.testing.assert_array_equal(scores_BxG, [[0], [1]])
  assert "no gold answer in 1 row" in caplog.text


@pytest.mark.parametrize("columns, where", [
    ({"solution": ["1"]}, "columns"),
    ({"answer": [["1"]]}, "columns['answer'][0]"),
    ({"answer": [True]}, "columns['answer'][0]"),
])
def test_bad_gold_columns_are_errors(math_reward, columns, where):
  with pytest.raises(InputError) as e:
    math_reward(["p"], [[r"\boxed{1}"]], columns)
  assert e.value.where.endswith(where)


@pytest.mark.parametrize("kwargs, where", [
    ({"timeout_s": -1.0}, "PoolConfig.timeout_s"),
    ({"num_workers": 0}, "PoolConfig.num_workers"),
    ({"gold_format": "gsm8k"}, "MathVerifyConfig.gold_format"),
    ({"answer_source": "boxed"}, "MathVerifyConfig.answer_source"),
    ({"answer_column": ""}, "MathVerifyConfig.answer_column"),
    ({"timeout": 3}, "MathVerifyReward"),
])
def test_config_errors(kwargs, where):
  with pytest.raises(InputError) as e:
    MathVerifyReward(**kwargs)
  assert e.value.where == where


def test_gold_formats():
  assert gold_answer("Natalia ... #### 1,080", GoldFormat.GSM8K, "w") == "1,080"
  assert gold_answer(r"so \boxed{\frac{1}{2}}.", GoldFormat.BOXED, "w") == r"\frac{1}{2}"
  assert gold_answer(r" \frac{1}{2} ", GoldFormat.ANSWER, "w") == r"\frac{1}{2}"
  assert gold_answer(27.0, GoldFormat.ANSWER, "w") == "27"
  assert gold_answer(0.25, GoldFormat.ANSWER, "w") == "0.25"
  assert gold_answer("", GoldFormat.ANSWER, "w") is None
  assert gold_answer(float("nan"), GoldFormat.ANSWER, "w") is None


def test_fast_path_agrees_with_math_verify(math_reward):
  """Wherever the fast path decides, Math-Verify (run in the pool) gives the same verdict."""
  pairs = [("1000", "1,000"), ("2.5", "2.50"), (r"\frac{1}{2}", "0.5"), ("3", "4"),
           ("-7", "7"), (r"\frac{14}{3}", "14/3"), ("0", "-0"), ("12", r"\frac{24}{2}"),
           ("100", "99"), (r"112,\!875", "112875"), ("13535", "13536"), ("2.5", "2.6"),
           ("1000000", "1000001")]
  decided = [(p, fast_path(*p)) for p in pairs]
  assert all(v is not None for _, v in decided)
  verdicts, _ = math_reward._pool.map(pairs)  # pylint: disable=protected-access
  assert [float(v) for v in verdicts] == [v for _, v in decided]
  # Values closer than 1e-4 (relative) are left to Math-Verify (it rounds: 1/3 == 0.333333 there).
  assert fast_path(r"\frac{1}{3}", "0.333333") is None
  assert fast_path("1000000.5", "1000000.6") is None
  assert fast_path("123456789", "123456788") == 0.0  # distinct integers below 10^12
  assert fast_path("1" * 20, "1" * 19 + "2") is None  # 20 digits: Math-Verify's precision decides
  assert fast_path("2.5", "2.6") == 0.0
  assert math_reward(["p"], [[r"\boxed{0.333333}"]], {"answer": [r"\frac{1}{3}"]})[0, 0] == 1.0


def test_hanging_answer_is_killed_and_pool_recovers():
  timeout_s = 2.0
  with MathVerifyReward("answer", timeout_s=timeout_s, num_workers=1,
                        answer_source=AnswerSource.LENIENT) as reward:
    reward.start()
    pids = reward._pool.worker_pids()  # pylint: disable=protected-access
    # Evaluating the power tower never finishes (and would need ~10^10^8 digits of memory).
    scores_BxG = reward(["p"], [[r"\boxed{9^{9^{9^{9}}}}", r"\boxed{3^2}"]], {"answer": ["9"]})
    stats = reward.last_stats
    np.testing.assert_array_equal(scores_BxG, [[0, 1]])
    assert stats.timed_out == 1
    assert stats.max_item_s < timeout_s + 1.5
    assert reward._pool.worker_pids() != pids  # pylint: disable=protected-access
    scores_BxG = reward(["p"], [[r"\boxed{\frac{18}{2}}", r"\boxed{x}"]], {"answer": [r"3^2"]})
    np.testing.assert_array_equal(scores_BxG, [[1, 0]])


def test_trainer_side_import_is_light():
  # sympy/Math-Verify live only in the verifier processes; JAX never enters them.
  code = ("import sys, darling_jax.rewards; "
          "print(sorted(m for m in ('sympy', 'math_verify', 'jax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"
