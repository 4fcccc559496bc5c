"""Combining quality functions, and the names configs use for the built-in ones.

`WeightedSum` scores q = sum_k w_k * q_k(prompts, completions, columns), each q_k checked by
`protocol.check_scores` (so a broken component is named in the error, not the sum). `BUILTINS` maps
a config name to a constructor; a new built-in (e.g. a neural reward model) adds one entry.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from darling_jax.errors import InputError
from darling_jax.rewards.math_verify import MathVerifyReward, gsm8k_reward
from darling_jax.rewards.protocol import QualityFn, check_batch, check_scores, function_name

def _reward_model(path: str | None = None, **kwargs: Any) -> QualityFn:
  if not path:
    raise InputError("reward_model", "needs path=<HF *ForSequenceClassification folder> "
                     "(config: quality.reward_model)")
  # Imported on use: this package stays JAX-free for the verifier worker processes.
  from darling_jax.rewards.reward_model_quality import RewardModelQuality

  return RewardModelQuality.from_pretrained(path, **kwargs)


BUILTINS: dict[str, Callable[..., QualityFn]] = {
    "math_verify": MathVerifyReward,  # MATH-style gold answers, Math-Verify over the whole answer
    "gsm8k": gsm8k_reward,  # GSM8K solutions ("#### 72"), lenient answer extraction
    "reward_model": _reward_model,  # HF *ForSequenceClassification / Athene-RM folder: path=...
}
# The verifiers among BUILTINS: text in, 0/1 out through the deadline pool (fuzzed together).
VERIFIERS = ("gsm8k", "math_verify")


class WeightedSum:
  """q = sum_k w_k * q_k over [B, G]; each component's output is validated on its own.

  Args:
    terms: (quality function, weight) pairs; weights are finite floats (negative allowed, e.g. a
      length penalty).
  """

  def __init__(self, terms: Sequence[tuple[QualityFn, float]]):
    if not terms:
      raise InputError("WeightedSum", "needs at least one (function, weight) pair")
    checked = []
    for k, term in enumerate(terms):
      if not isinstance(term, (tuple, list)) or len(term) != 2:
        raise InputError(f"WeightedSum terms[{k}]", f"expected (function, weight), got {term!r}")
      fn, weight = term
      if not callable(fn):
        raise InputError(f"WeightedSum terms[{k}]", f"{fn!r} is not callable")
      if (isinstance(weight, bool) or not isinstance(weight, (int, float))
          or not math.isfinite(weight)):
        raise InputError(
            f"WeightedSum terms[{k}]", f"weight must be a finite number, got {weight!r}")
      checked.append((fn, float(weight)))
    self.terms: tuple[tuple[QualityFn, float], ...] = tuple(checked)
    self.name = " + ".join(f"{w:g}*{function_name(fn)}" for fn, w in self.terms)

  def components(
      self,
      prompts: Sequence[str],
      completions: Sequence[Sequence[str]],
      columns: Mapping[str, Sequence[Any]],
  ) -> dict[str, Float[np.ndarray, "B G"]]:
    """Each component's checked float32 [B, G] scores, by name (for logging)."""
    b_size, g_size = check_batch(prompts, completions, columns)
    out = {}
    for k, (fn, _) in enumerate(self.terms):
      name = function_name(fn)
      key = name if name not in out else f"{name}#{k}"
      out[key] = check_scores(fn(prompts, completions, columns), name, b_size, g_size)
    return out

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Sequence[str]],
      columns: Mapping[str, Sequence[Any]],
  ) -> Float[np.ndarray, "B G"]:
    parts = self.components(prompts, completions, columns)
    total_BxG = np.zeros_like(next(iter(parts.values())))
    for (_, weight), scores_BxG in zip(self.terms, parts.values()):
      total_BxG += np.float32(weight) * scores_BxG
    return total_BxG

  def close(self) -> None:
    """Forwards `close()` to every component that has one."""
    for fn, _ in self.terms:
      close = getattr(fn, "close", None)
      if callable(close):
        close()


def builtin(name: str, **kwargs: Any) -> QualityFn:
  """The built-in quality function called `name`, built with `kwargs`.

  Raises:
    InputError: unknown name (the message lists the known ones).
  """
  if name not in BUILTINS:
    raise InputError("quality", f"unknown quality function {name!r}; built-ins: {sorted(BUILTINS)}")
  return BUILTINS[name](**kwargs)


def from_weights(weights: Mapping[str, float], **kwargs: Any) -> QualityFn:
  """A config's {"builtin name": weight} as one QualityFn; a single weight-1 entry is returned bare.

  `kwargs` go to every constructor (e.g. timeout_s); use `builtin` + `WeightedSum` for more control.
  """
  if not weights:
    raise InputError("quality", "no quality function named")
  fns = [(builtin(name, **kwargs), weight) for name, weight in weights.items()]
  if len(fns) == 1 and fns[0][1] == 1.0:
    return fns[0][0]
  return WeightedSum(fns)
