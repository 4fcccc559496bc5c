"""The quality-function protocol: how any reward plugs into DARLING.

DARLING's reward for rollout i of a prompt is r_i = q_i * div_i (section 1 of the method): the
diversity div_i comes from the partition of the group, the quality q_i from a *quality function*.
A quality function scores WHOLE GROUPS at once, so it can batch its work (one process-pool round for
a verifier, one forward pass for a reward model):

    fn(prompts, completions, columns) -> scores_BxG

    prompts:     Sequence[str], length B          the B prompts of the step
    completions: Sequence[Sequence[str]], [B][G]   G rollouts per prompt (every row has length G)
    columns:     Mapping[str, Sequence[Any]]       extra dataset columns, each of length B
                                                   (e.g. "answer" for the gold answer)
    returns:     np.ndarray, shape [B, G], real numbers (bool/int/float; returned as float32)

Any callable with that signature is a `QualityFn` (a plain function, a class with `__call__`).
Optional extras a class may have: `name` (used in error messages and logs) and `close()` (release
worker processes or device memory; `WeightedSum.close` forwards it). The built-ins are named in
`darling_jax.rewards.combine.BUILTINS` so configs can refer to them by name; a neural reward model
(e.g. Athene-RM-8B for chat, section 1.1) is one more QualityFn: it tokenises prompt + completion,
runs its forward pass and returns its scalar head as [B, G].

Completions are untrusted model text: a quality function must never eval/exec it or interpolate it
into anything executed, and must return within bounded time on any input (see `math_verify`).

What the trainer does with a returned value (`check_scores`):
  * wrong type, wrong shape, or a non-real dtype (complex, object, str): `InputError` naming the
    function and the value. That is a bug in the function and is always loud.
  * NaN or +-inf entries: each becomes 0.0 and a warning names the function and the first bad
    [b, g]. A long run must not die because one completion made a scorer produce NaN. But if more
    than `max_nonfinite_fraction` (default 0.5) of the batch is non-finite, the function is broken
    rather than unlucky, and `InputError` is raised. (0.0 is the "no credit" value of a 0/1
    verifier; a reward model with unbounded scores should return finite values itself.)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from jaxtyping import Float

from darling_jax.errors import InputError

# Above this fraction of non-finite entries a returned batch is an error, not bad luck.
MAX_NONFINITE_FRACTION = 0.5

_log = logging.getLogger(__name__)


@runtime_checkable
class QualityFn(Protocol):
  """A quality (reward) function over whole groups; see the module docstring."""

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Sequence[str]],
      columns: Mapping[str, Sequence[Any]],
  ) -> np.ndarray:
    ...


def function_name(fn: Any) -> str:
  """A readable name for error messages: `fn.name`, else its qualified name, else its type."""
  name = getattr(fn, "name", None)
  if isinstance(name, str) and name:
    return name
  qualname = getattr(fn, "__qualname__", None)
  return qualname if isinstance(qualname, str) else type(fn).__qualname__


def is_chat(prompt: Any) -> bool:
  """A chat-message prompt: a sequence of {"role": str, "content": str} (dataset rows may hold
  these instead of text; quality functions receive them as they are)."""
  return (isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) > 0
          and all(isinstance(m, Mapping) and isinstance(m.get("role"), str)
                  and isinstance(m.get("content"), str) for m in prompt))


def prompt_text(prompt: str | Sequence[Mapping[str, str]]) -> str:
  """A prompt as one text: itself, a single user turn's content, or the turns as "role: content"
  paragraphs (for quality functions that read text)."""
  if isinstance(prompt, str):
    return prompt
  if len(prompt) == 1 and prompt[0]["role"] == "user":
    return prompt[0]["content"]
  return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def check_batch(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    columns: Mapping[str, Sequence[Any]],
) -> tuple[int, int]:
  """Validates the inputs of a quality call; returns (B, G).

  Raises:
    InputError: a prompt that is neither a str nor chat messages, a completion that is not a
      str, ragged groups, or a column whose length is not B.
  """
  if isinstance(prompts, str) or not isinstance(prompts, Sequence):
    raise InputError("prompts", f"expected a sequence of B strings, got {type(prompts).__name__}")
  if isinstance(completions, str) or not isinstance(completions, Sequence):
    raise InputError(
        "completions", f"expected [B][G] strings, got {type(completions).__name__}")
  b_size = len(prompts)
  if len(completions) != b_size:
    raise InputError("completions", f"{len(completions)} groups for {b_size} prompts")
  g_size = len(completions[0]) if b_size else 0
  for b, (prompt, group) in enumerate(zip(prompts, completions)):
    if not (isinstance(prompt, str) or is_chat(prompt)):
      raise InputError(f"prompts[{b}]", f"expected str or chat messages, got "
                       f"{type(prompt).__name__}")
    if isinstance(group, str) or not isinstance(group, Sequence):
      raise InputError(f"completions[{b}]", f"expected G strings, got {type(group).__name__}")
    if len(group) != g_size:
      raise InputError(f"completions[{b}]", f"has {len(group)} completions, row 0 has {g_size}")
    for g, text in enumerate(group):
      if not isinstance(text, str):
        raise InputError(f"completions[{b}][{g}]", f"expected str, got {type(text).__name__}")
  if not isinstance(columns, Mapping):
    raise InputError(
        "columns", f"expected a mapping name -> B values, got {type(columns).__name__}")
  for key, values in columns.items():
    if isinstance(values, str) or not hasattr(values, "__len__") or len(values) != b_size:
      got = len(values) if hasattr(values, "__len__") else type(values).__name__
      raise InputError(f"columns[{key!r}]", f"expected {b_size} values (one per prompt), got {got}")
  return b_size, g_size


def check_scores(
    scores: Any,
    name: str,
    b_size: int,
    g_size: int,
    *,
    max_nonfinite_fraction: float = MAX_NONFINITE_FRACTION,
) -> Float[np.ndarray, "B G"]:
  """Validates what a quality function returned; returns float32 [B, G] with non-finite -> 0.

  Args:
    scores: the function's return value (NumPy array, list, or a jax.Array).
    name: the function's name, for messages.
    b_size: B, number of prompts.
    g_size: G, completions per prompt.
    max_nonfinite_fraction: more non-finite entries than this fraction of B*G is an error.

  Raises:
    InputError: wrong type/shape/dtype, or too many non-finite entries (see module docstring).
  """
  if "jax" in type(scores).__module__:  # a jax.Array: one explicit transfer, not an implicit one
    import jax  # pylint: disable=import-outside-toplevel
    scores = jax.device_get(scores)
  try:
    arr = np.asarray(scores)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(name, f"returned {type(scores).__name__}, not an array ({e})") from None
  if arr.dtype.kind not in "biuf":
    raise InputError(
        name, f"returned dtype {arr.dtype} ({type(scores).__name__}); expected real numbers")
  if arr.shape != (b_size, g_size):
    raise InputError(name, f"returned shape {arr.shape}, expected [B, G] = {(b_size, g_size)}")
  # Finite float64 values beyond float32's range become inf here, and are then treated as bad.
  with np.errstate(over="ignore"):
    scores_BxG = arr.astype(np.float32)
  bad_BxG = ~np.isfinite(scores_BxG)
  n_bad = int(bad_BxG.sum())
  if n_bad:
    b, g = (int(i) for i in np.argwhere(bad_BxG)[0])
    value = arr[b, g]
    if n_bad > max_nonfinite_fraction * bad_BxG.size:
      raise InputError(
          name, f"returned {n_bad} non-finite of {bad_BxG.size} scores (first: [{b}, {g}] = "
          f"{value}); more than {max_nonfinite_fraction:.0%} means the function is broken")
    _log.warning("%s: %d non-finite score(s) set to 0 (first: [%d, %d] = %s)",
                 name, n_bad, b, g, value)
    scores_BxG[bad_BxG] = 0.0
  return scores_BxG


def score_groups(
    fn: QualityFn,
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    max_nonfinite_fraction: float = MAX_NONFINITE_FRACTION,
) -> Float[np.ndarray, "B G"]:
  """Calls a quality function with checked inputs and returns its checked float32 [B, G] scores.

  This is the one entry point the trainer uses; a user function never needs to validate its own
  inputs or outputs.
  """
  columns = {} if columns is None else columns
  b_size, g_size = check_batch(prompts, completions, columns)
  return check_scores(
      fn(prompts, completions, columns), function_name(fn), b_size, g_size,
      max_nonfinite_fraction=max_nonfinite_fraction)
