"""The demo task: answer a request with an activity that fits it.

  quality  q = 1 if the answer is one of the fitting activities (in any framing), else 0: a strict
           verifier that parses the (untrusted) completion, never evaluates it.
  classes  the activity an answer names (ground truth, for checking the learned classifier and for
           an exact distinct count); unparseable answers are each their own class.

Everything random here is seeded; the corpus and the prompt files are identical on every machine.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from darling_jax.demo.activities import FRAMINGS, REQUESTS, VALID_SHARE, ZIPF_EXPONENT

# phrasing -> (request id, activity index)
_PHRASINGS: dict[str, tuple[str, int]] = {
    phrasing: (rid, i)
    for rid, (_, acts) in REQUESTS.items() for i, pair in enumerate(acts) for phrasing in pair
}
_FRAMING_RES = [re.compile("^" + re.escape(f).replace(r"\{\}", "(.+?)") + "$") for f in FRAMINGS]
_MAX_CHARS = 400  # an answer is one short sentence; longer text is not a valid answer


def normalize(text: str) -> str:
  return " ".join(text.split())


def parse_activity(text: str) -> tuple[str, int] | None:
  """(request id, activity index) named by an answer, or None if it is not a well-formed answer."""
  text = normalize(text)
  if len(text) > _MAX_CHARS:
    return None
  for rx in _FRAMING_RES:
    m = rx.match(text)
    if m and m.group(1) in _PHRASINGS:
      return _PHRASINGS[m.group(1)]
  return None


def activity_quality(prompts: Sequence[Any], completions: Sequence[Sequence[str]],
                     columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
  """QualityFn: 1 where the completion names an activity fitting the row's request ("answer")."""
  requests = columns["answer"]
  out = np.zeros((len(completions), len(completions[0]) if completions else 0), np.float32)
  for b, group in enumerate(completions):
    for g, text in enumerate(group):
      parsed = parse_activity(text)
      out[b, g] = float(parsed is not None and parsed[0] == requests[b])
  return out


def true_classes(group: Sequence[str]) -> list[int]:
  """Class ids (smallest member index) by activity; unparseable answers are singletons."""
  first: dict[Any, int] = {}
  out = []
  for i, text in enumerate(group):
    key = parse_activity(text) or ("unparsed", i)
    out.append(first.setdefault(key, i))
  return out


def true_equivalence(groups: Sequence[Sequence[str]]) -> np.ndarray:
  """[B, G, G] 1.0 where two answers name the same activity (the ground-truth partition)."""
  out = []
  for group in groups:
    c = np.asarray(true_classes(group))
    out.append((c[:, None] == c[None, :]).astype(np.float32))
  return np.stack(out)


def answer_texts() -> list[str]:
  """Every well-formed answer (all framings of all phrasings)."""
  return [f.format(p) for p in _PHRASINGS for f in FRAMINGS]


def sample_answer(rid: str, rng: np.random.Generator) -> str:
  """One pre-training answer: a fitting activity (Zipf-popular) or another request's activity."""
  _, acts = REQUESTS[rid]
  if rng.uniform() < VALID_SHARE[rid]:
    weights = 1.0 / np.arange(1, len(acts) + 1) ** ZIPF_EXPONENT
    act = acts[rng.choice(len(acts), p=weights / weights.sum())]
  else:
    others = [r for r in REQUESTS if r != rid]
    other = others[rng.integers(len(others))]
    act = REQUESTS[other][1][rng.integers(len(REQUESTS[other][1]))]
  return FRAMINGS[rng.integers(len(FRAMINGS))].format(act[rng.integers(2)])


def write_prompt_files(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """train.jsonl (the first three ways of asking, per request) and eval.jsonl (the fourth)."""
  folder.mkdir(parents=True, exist_ok=True)
  train, evals = folder / "train.jsonl", folder / "eval.jsonl"
  with open(train, "w") as ft, open(evals, "w") as fe:
    for rid, (asks, _) in REQUESTS.items():
      for i, ask in enumerate(asks):
        (fe if i == len(asks) - 1 else ft).write(json.dumps({"prompt": ask, "request": rid}) + "\n")
  return train, evals
