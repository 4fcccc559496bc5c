"""Fuzz: thousands of adversarial completions through EVERY built-in quality function.

Asserted for every call: no exception, every score is exactly 0 or 1, no single answer ran past
its limit (`TIMEOUT_S` + `ITEM_MARGIN_S`) and no call past its own (`BATCH_TIMEOUT_S` +
`CALL_MARGIN_S`). The margins cover killing/reaping a worker and the parent's in-process
extraction (1 MB strings included) on a loaded 2-core machine. Afterwards the pools still score
ordinary answers correctly.
"""

import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from darling_jax.rewards.combine import VERIFIERS, builtin

TIMEOUT_S = 1.0
BATCH_TIMEOUT_S = 4.0
ITEM_MARGIN_S = 1.0
CALL_MARGIN_S = 3.0
G = 8
B = 16

# Gold column per built-in: MATH-style final answers / GSM8K solutions (formats of the real data).
GOLDS = {
    "math_verify": [r"\frac{14}{3}", "9", r"\left( 3, \frac{\pi}{2} \right)", "p - q"],
    "gsm8k": ["She makes 9 * 2 = $18.\n#### 18", "#### 1,080", "So -3.\n#### -3", "#### 72"],
}

MB = 1_000_000

# Answers a verifier must survive: runaway arithmetic, deep nesting, broken LaTeX, odd unicode.
PATHOLOGICAL_ANSWERS = [
    "9**9**9**9", "9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "1e999999", "2^{2^{40}}", "(10^{10})!",
    r"\sum_{i=1}^{10^{100}} i", "x^{x^{x^{x^{x}}}}",
    r"\frac{\frac{\frac{1}{2}}{3}}{4}", "{" * 400 + "1" + "}" * 400,
    r"\frac{" * 120 + "1" + "}{2}" * 120, r"\sqrt{" * 80 + "2" + "}" * 80,
    "(" * 300 + "1" + ")" * 300, r"\left(" * 40 + "1" + r"\right)" * 40,
    r"\begin{pmatrix}" + "1 & " * 150 + r"1 \end{pmatrix}", r"\text{" + "a" * 500 + "}",
    "1/0", r"\frac{1}{0}", "0^0", r"\infty - \infty", "nan", "NaN", "inf", "-inf",
    r"\sqrt{-1}", "i^i", "1" * 999, "100!", r"\int_0^\infty e^{-x^2} dx",
    "\x00", "\u200b42", "4\u200b2", "\u202e42\u202c", "4\u0301", "\U0001F600", "\udcff",
    "\ufffd\ufffd", "\\", "\\\\", "$", "$$", "#", "%", "&", "_", "~", "}{", "\\{", "\\}",
    r"\mathrm{\mathrm{\mathrm{x}}}", r"\frac{14}{3}", "14/3", "9", "9.0", "-3", "18", "1,080",
]


def _noises(rng: random.Random) -> list[str]:
  """Text around the answer; the big ones are built once and shared between completions."""
  junk_alphabet = "{}\\$#^_0123456789.,-+/ abcx\n\t\u200b\u202e\u0301\x00\U0001F600"
  raw = rng.randbytes(MB)
  big = [
      "a" * MB, "{" * MB, "}" * MB, "\\" * MB, "1," * (MB // 2),
      raw.decode("utf-8", "surrogateescape"), raw[:65536].decode("utf-8", "replace"),
      "\u202e\u200b\u200d\u0301" * 10_000, "\U0001F600" * 10_000, "\x00" * 1000,
      r"\frac{" * 10_000 + "1" + "}{2}" * 10_000,  # 10k-deep \frac
      "{" * 10_000 + "}" * 10_000,
      r"\boxed{" * 5000 + "7" + "}" * 5000,  # 5k nested boxes
      r"\boxed{" * 20_000,  # unbalanced
      "$$" * 1000, "#### " * 1000, r"\boxed{\boxed{\boxed{}}}", "}}}{{{",
  ]
  small = ["".join(rng.choice(junk_alphabet) for _ in range(rng.randrange(200)))
           for _ in range(60)]
  return [""] + big + small


def _corpus(name: str) -> list[tuple[list[str], list[list[str]]]]:
  """Batches of (golds [B], completions [B][G]) totalling about 2,500 completions."""
  rng = random.Random(0)
  noises = _noises(rng)
  golds = GOLDS[name]
  by_gold: list[list[str]] = [[] for _ in golds]
  k = 0
  # Every answer in five wrappings, all under ONE gold, so each (gold, answer) pair is verified
  # once per call (dedup) and hanging answers cost one deadline each, not one per wrapping.
  for j, answer in enumerate(PATHOLOGICAL_ANSWERS):
    for wrap in (r"\boxed{%s}", r"\fbox{%s}", "#### %s", "the answer is %s", r"\boxed{%s"):
      by_gold[j % len(golds)].append(noises[k % len(noises)] + " " + wrap % answer)
      k += 1
  # Noise alone and noise around noise: extraction finds junk, numbers or nothing.
  for _ in range(2200):
    text = rng.choice(noises)
    if rng.random() < 0.3:
      text = text + rng.choice(noises[-60:]) + rng.choice(["", r"\boxed{", "####", "}"])
    by_gold[rng.randrange(len(golds))].append(text)
  groups = []
  for gi, texts in enumerate(by_gold):
    texts += [""] * (-len(texts) % G)
    groups += [(golds[gi], texts[i:i + G]) for i in range(0, len(texts), G)]
  return [([g for g, _ in groups[i:i + B]], [c for _, c in groups[i:i + B]])
          for i in range(0, len(groups), B)]


# The neural reward model gets its adversarial inputs in test_reward_model_quality.py.
@pytest.fixture(scope="module", params=sorted(VERIFIERS))
def named_reward(request):
  reward = builtin(request.param, timeout_s=TIMEOUT_S, batch_timeout_s=BATCH_TIMEOUT_S,
                   num_workers=2)
  reward.start()
  yield request.param, reward
  reward.close()


def _check_call(reward, golds, completions):
  t0 = time.monotonic()
  scores_BxG = reward(["prompt"] * len(golds), completions, {"answer": golds})
  wall = time.monotonic() - t0
  assert scores_BxG.shape == (len(golds), len(completions[0]))
  assert np.isin(scores_BxG, [0.0, 1.0]).all()
  stats = reward.last_stats
  assert stats.max_item_s < TIMEOUT_S + ITEM_MARGIN_S, stats
  assert wall < BATCH_TIMEOUT_S + CALL_MARGIN_S, (wall, stats)
  return scores_BxG, stats


@pytest.mark.slow
def test_adversarial_corpus(named_reward):
  name, reward = named_reward
  batches = _corpus(name)
  n_completions = sum(len(c) * G for _, c in batches)
  assert n_completions >= 2000
  timed_out = 0
  for golds, completions in batches:
    _, stats = _check_call(reward, golds, completions)
    timed_out += stats.timed_out + stats.unfinished
  assert timed_out >= 1, "the corpus should contain answers that hang the verifier"
  reward.start()  # wait for the replacements of killed workers (not billed to the check below)
  _assert_still_correct(name, reward)


def _assert_still_correct(name, reward):
  # The pool items here resemble the workers' warm-up pairs, so they take milliseconds.
  if name == "gsm8k":
    scores_BxG = reward(["p"], [["#### 72", r"\boxed{72}", r"\boxed{8 \cdot 9}", "#### 71"]],
                        {"answer": ["#### 72"]})
    np.testing.assert_array_equal(scores_BxG, [[1, 1, 1, 0]])
  else:
    completions = [[r"\boxed{\sqrt{117}}", r"\boxed{3\sqrt{13}}", r"\boxed{\sqrt{13}}"]]
    scores_BxG = reward(["p"], completions, {"answer": [r"3\sqrt{13}"]})
    np.testing.assert_array_equal(scores_BxG, [[1, 1, 0]])
  assert reward.last_stats.items >= 1 and reward.last_stats.ok == reward.last_stats.items


_FRAGMENTS = [r"\boxed{", r"\fbox{", "{", "}", "\\", "$", "####", r"\frac", r"\sqrt", "(", ")",
              ",", ".", "-", "/", "1", "2", "9", "x", " ", "\n", "\u200b", "\x00", "\udcff"]
_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=60).map("".join),
)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(group=st.lists(_texts, min_size=1, max_size=G), wrap=st.booleans())
def test_hypothesis_text(named_reward, group, wrap):
  name, reward = named_reward
  if wrap:
    group = [r"\boxed{" + text + "}" for text in group]
  golds = GOLDS[name][:1]
  _check_call(reward, golds, [group])


def _number_variants(rng: random.Random, n: int) -> list[tuple[str, str]]:
  """(gold, answer) pairs: a number written the ways people and models write it, and the ways
  that only look like it (other digit scripts, a negation, units, exponents, near values)."""
  scripts = [str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10))),
             str.maketrans("0123456789", "".join(chr(0x0660 + i) for i in range(10)))]
  out = []
  for _ in range(n):
    value = rng.choice([rng.randrange(10), rng.randrange(10**6), rng.randrange(10**13)])
    gold = str(value) if rng.random() < 0.8 else f"\\frac{{{value}}}{{{rng.randrange(1, 9)}}}"
    text = str(value + rng.choice([0, 0, 0, 1, -1]))
    kind = rng.randrange(12)
    if kind == 0:
      text = f"{int(text):,}"
    elif kind == 1:
      text += ".0" + "0" * rng.randrange(3)
    elif kind == 2:
      text = text.translate(rng.choice(scripts))
    elif kind == 3:
      text = rng.choice([r"\neg ", "-", "\u2212", "+", "~"]) + text
    elif kind == 4:
      text += rng.choice([r"\text{ apples}", r"\text{ apples}^2", "^2", r"\%", "!", "e3"])
    elif kind == 5:
      text = rng.choice(["$", r"\$", "$$"]) + text + rng.choice(["$", "", "$$"])
    elif kind == 6:
      text = f"\\frac{{{text}}}{{{rng.randrange(1, 4)}}}"
    elif kind == 7:
      text = f"{text}/{rng.randrange(1, 4)}"
    elif kind == 8:
      text = text[:-1] + "," + text[-1:] if len(text) > 1 else text
    elif kind == 9:
      text = "0" * rng.randrange(1, 3) + text
    out.append((gold, text))
  return out


@pytest.mark.slow
def test_fast_path_never_scores_one_where_math_verify_says_no():
  """10,000 generated answers: whenever our in-process extraction + fast path scores 1, Math-Verify
  (what the module promises never to disagree with) scores the same pair 1 too."""
  import math_verify

  from darling_jax.rewards.math_answer import AnswerSource, extract_answer
  from darling_jax.rewards.math_verify import fast_path

  rng = random.Random(1)
  pairs = _number_variants(rng, 10_000)
  credited = set()
  for gold, text in pairs:
    answer = extract_answer(f"The answer is \\boxed{{{text}}}.", AnswerSource.BOXED)
    if answer is not None and fast_path(gold, answer) == 1.0:
      credited.add((gold, answer))
  assert 500 < len(credited) < 10_000  # the generator hits the fast path, and not only it
  wrong = [(g, a) for g, a in sorted(credited)
           if not math_verify.verify(math_verify.parse("\\boxed{" + g + "}"),
                                     math_verify.parse("\\boxed{" + a + "}"))]
  assert wrong == [], wrong[:10]
