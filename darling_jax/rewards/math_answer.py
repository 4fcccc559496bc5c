"""Final-answer extraction and number normalisation for untrusted model text.

Model output is untrusted: it may be megabytes long, contain binary junk, unbalanced braces or
pathological nesting. Everything here is pure Python over bounded input, linear in that input,
and never evaluates anything (no eval/exec, no sympy):

  * Only the last `MAX_SCAN_CHARS` characters of a completion are scanned. The final answer of
    a chain-of-thought sits at its end, and 32,768 characters is about 8,192 tokens at ~4
    chars/token, the paper's longest math response (section 5 of the reference notes). So an
    honest completion is never cut, while a 1 MB adversarial one costs the same as a 32 KB one.
  * An extracted answer longer than `MAX_ANSWER_CHARS` is rejected (None). The longest gold
    answer in MATH (train + test) is 159 characters (a 3x3 matrix); 1,000 characters leaves room
    for verbose formatting while keeping what can reach sympy small.
  * `nesting_depth` measures bracket nesting; the deepest gold answer in MATH (train + test) nests
    3 deep, and sympy takes seconds to forever on a few hundred levels, so verifiers may refuse
    answers nested deeper than `MAX_ANSWER_NESTING` (12) without parsing them.
  * A "plain number" has at most `MAX_NUMBER_DIGITS` digits, so the exact Fraction arithmetic of
    the fast path stays microseconds (and far below CPython's 4,300-digit int-parsing limit).

Extraction order (`AnswerSource.LENIENT`): the last `\\boxed{...}` / `\\fbox{...}` whose braces
balance (nested braces and escaped `\\{ \\}` handled), else GSM8K's `#### 42`, else the last
number in the text. `AnswerSource.BOXED` uses the boxed answer only. `AnswerSource.WHOLE` extracts
nothing here: the verifier hands the completion's last `MAX_SCAN_CHARS` characters to Math-Verify,
as the authors' reward does (verl's `math_verify.compute_score`: gold `\\boxed{gold}` against the
whole model output, LaTeX and expression extraction).
"""

from __future__ import annotations

import enum
import fractions
import re

MAX_SCAN_CHARS = 32_768
MAX_ANSWER_CHARS = 1_000
MAX_NUMBER_DIGITS = 64
MAX_ANSWER_NESTING = 12


class AnswerSource(enum.Enum):
  """Where in a completion the final answer is looked for."""

  BOXED = "boxed"  # last \boxed{} / \fbox{} only (fast: in-process extraction)
  LENIENT = "lenient"  # boxed, else "#### x", else the last number
  WHOLE = "whole"  # Math-Verify's own extraction over the whole completion (the reference's)


# `\boxed` / `\fbox` not followed by another letter (so `\boxedx` is some other macro).
# Group 1: spaces between the macro and its argument.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])(\s*)")
# The only tokens that matter for brace matching: an escape (`\{`, `\}`, `\\`, `\b`...) or a brace.
# The escape alternative swallows `\{` so an escaped brace never opens or closes a group.
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
# Same idea for nesting depth over all three bracket kinds (`\left(` counts as "(").
_BRACKET_TOKEN_RE = re.compile(r"\\.|[()\[\]{}]", re.S)
# `\boxed 5` (no braces): the answer runs to the next space, `$` or brace.
_BARE_BOX_ARG_RE = re.compile(r"[^\s${}]+")

# A number as people write it: sign, thousands groups or plain digits, decimals, a /denominator.
# The look-behind stops a match starting inside a word or another number ("x2", "1.5" -> not "5").
_NUMBER = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+\u2212]?\.\d+"
# ASCII digits only: Python's \d also matches full-width and Arabic-Indic digits, which
# Math-Verify does not read as numbers, and the fast path must never disagree with it.
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})", re.ASCII)
_GSM8K_RE = re.compile(rf"####\s*\$?\s*({_NUMBER})", re.ASCII)

_PLAIN_NUMBER_RE = re.compile(
    r"([-+]?)(\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.(\d+))?(?:/(\d+))?", re.ASCII
)
# \frac{3}{4}, \dfrac{-3}{4}, \tfrac34 (the one-digit shorthand), with an optional leading sign.
_LATEX_FRAC_RE = re.compile(
    r"([-+]?)\\[dt]?frac(?:\{\s*([-+]?\d+)\s*\}\{\s*([-+]?\d+)\s*\}|(\d)(\d))", re.ASCII
)
# LaTeX spacing inside numbers ("112,\!875", "1\,000").
# LaTeX spacing Math-Verify ignores: a negative thin space anywhere, the others only around the
# number ("1\\,000" and "~5" are no numbers to it, and the fast path must never disagree).
_LATEX_SPACING_RE = re.compile(r"\\!")
_EDGE_SPACING_RE = re.compile(r"^(?:\\[,;: ]|\s)+|(?:\\[,;: ]|\s)+$")


def _tail(text: str) -> str:
  return text[-MAX_SCAN_CHARS:]


def _accept(answer: str) -> str | None:
  answer = answer.strip()
  if not answer or len(answer) > MAX_ANSWER_CHARS:
    return None
  return answer


def _closing_brace(tail: str, open_at: int) -> int | None:
  """Index of the "}" matching the "{" at `open_at`, or None if it never closes."""
  depth = 0
  for tok in _BRACE_TOKEN_RE.finditer(tail, open_at):
    if tok.group() == "{":
      depth += 1
    elif tok.group() == "}":
      depth -= 1
      if depth == 0:
        return tok.start()
  return None


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` / `\\fbox{...}` whose braces balance, else None.

  "Last" is by start position, so `\\boxed{\\boxed{5}}` gives `5` and `\\boxed{1} ... \\boxed{2}`
  gives `2`. A trailing unclosed `\\boxed{` is skipped in favour of the previous complete one.
  Linear in the scanned text: the last box is matched directly (the common case costs the length of
  the answer); only if it never closes is one stack pass (no recursion) made for all the others.
  """
  tail = _tail(text)
  # Argument start of each box (after optional spaces) and whether spaces were skipped.
  args = [(m.end(), m.start(1) < m.end()) for m in _BOX_RE.finditer(tail)]
  if not args:
    return None
  close_of: dict[int, int] | None = None
  for k, (s, spaced) in enumerate(reversed(args)):
    if s < len(tail) and tail[s] == "{":
      if k == 0:
        e = _closing_brace(tail, s)
      else:
        if close_of is None:
          close_of = _all_closing_braces(tail, args[0][0])
        e = close_of.get(s)
      if e is not None:
        return _accept(tail[s + 1:e])
    elif spaced:  # "\\boxed 5"
      m = _BARE_BOX_ARG_RE.match(tail, s)
      if m:
        return _accept(m.group())
  return None


def _all_closing_braces(tail: str, start: int) -> dict[int, int]:
  """{index of "{": index of its matching "}"} for every brace pair from `start` on."""
  close_of: dict[int, int] = {}
  stack: list[int] = []
  for tok in _BRACE_TOKEN_RE.finditer(tail, start):
    if tok.group() == "{":
      stack.append(tok.start())
    elif tok.group() == "}" and stack:
      close_of[stack.pop()] = tok.start()
  return close_of


def nesting_depth(text: str) -> int:
  """Deepest nesting of (), [], {} (escaped `\\{` etc. skipped; `\\left(` counts as "(")."""
  depth = deepest = 0
  for tok in _BRACKET_TOKEN_RE.finditer(text):
    t = tok.group()
    if t in "([{":
      depth += 1
      deepest = max(deepest, depth)
    elif t in ")]}":
      depth = max(0, depth - 1)
  return deepest


def gsm8k_answer(text: str) -> str | None:
  """The number after the last `####` (GSM8K's final-answer marker), else None."""
  found = None
  for found in _GSM8K_RE.finditer(_tail(text)):
    pass
  return None if found is None else _accept(found.group(1))


def last_number(text: str) -> str | None:
  """The last number written in the text ("1,000", "-2.5", "3/4", ".5"), else None."""
  found = None
  for found in _NUMBER_RE.finditer(_tail(text)):
    pass
  return None if found is None else _accept(found.group())


def extract_answer(text: str, source: AnswerSource = AnswerSource.LENIENT) -> str | None:
  """The final answer of a completion, as text, or None when it gives none.

  Args:
    text: untrusted model output (any length; only its tail is scanned).
    source: BOXED: the last balanced `\\boxed{}`/`\\fbox{}` only. LENIENT: that, else GSM8K's
      `#### x`, else the last number. WHOLE: the last boxed answer too (a verifier's equality
      fast path; the verdict itself comes from Math-Verify over the whole text).
  """
  answer = last_boxed(text)
  match source:
    case AnswerSource.BOXED | AnswerSource.WHOLE:
      return answer
    case AnswerSource.LENIENT:
      if answer is None:
        answer = gsm8k_answer(text)
      if answer is None:
        answer = last_number(text)
      return answer


def parse_number(text: str) -> fractions.Fraction | None:
  """The exact value of a plain number, or None if `text` is anything else.

  Plain numbers: integers and decimals with an optional sign and thousands commas ("1,000",
  "-2.50", ".5"), a ratio of those ("3/4"), or a LaTeX fraction of integers ("\\frac{3}{4}",
  "-\\dfrac{14}{3}", "\\tfrac34"). Surrounding `$`, a leading `\\$`, negative thin spaces
  ("112,\\!875"), spacing commands at either end and a trailing period are ignored; the Unicode
  minus counts as "-".
  Anything else (units, percent, exponents, "1e5", more than `MAX_NUMBER_DIGITS` digits) is None:
  those go to the full verifier, which knows their conventions.
  """
  if len(text) > 4 * MAX_NUMBER_DIGITS:
    return None
  s = _LATEX_SPACING_RE.sub("", text).replace("{,}", ",").replace("\u2212", "-").strip()
  s = _EDGE_SPACING_RE.sub("", s)
  s = s.strip("$").strip()
  if s.startswith("\\$"):
    s = s[2:].lstrip()
  s = s.rstrip(".").rstrip()
  if sum(c.isdigit() for c in s) > MAX_NUMBER_DIGITS:
    return None
  m = _LATEX_FRAC_RE.fullmatch(s)
  if m:
    sign, num, den, num1, den1 = m.groups()
    num, den = int(num if num is not None else num1), int(den if den is not None else den1)
    if den == 0:
      return None
    value = fractions.Fraction(num, den)
    return -value if sign == "-" else value
  m = _PLAIN_NUMBER_RE.fullmatch(s)
  if m is None:
    return None
  sign, whole, decimals, den = m.groups()
  value = fractions.Fraction(int(whole.replace(",", "") or "0"))
  if decimals:
    value += fractions.Fraction(int(decimals), 10 ** len(decimals))
  if den is not None:
    if int(den) == 0:
      return None
    value /= int(den)
  return -value if sign == "-" else value


def normalize_number(text: str) -> str | None:
  """Canonical text of a plain number ("1,000" -> "1000", "2.50" -> "5/2", "0.5" -> "1/2").

  Equal values give equal strings; None when `text` is not a plain number (see `parse_number`).
  """
  value = parse_number(text)
  if value is None:
    return None
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"
