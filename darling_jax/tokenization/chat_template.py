"""Chat templates rendered with jinja2 exactly as HF `apply_chat_template` renders them.

Templates come from checkpoints, i.e. untrusted: they run in jinja2's immutable sandbox, and namespaces
refuse underscore attributes, as transformers does. The sandbox stops attribute escapes but not
work: nested `range(100000)` loops or `'a' * 10**9` would hang or take gigabytes. So every render
also has a budget (`RenderLimits`): loop iterations over `range`, seconds, output characters, and
the size of any string/list built by `*`, `**` or `+`. Past it, one InputError names the limit.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import functools
import json
import time
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils

from darling_jax.errors import InputError


class _Namespace(jinja2.utils.Namespace):
  """jinja2 namespace that refuses dunder/underscore attributes (sandbox hardening, as HF does)."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(f"chat template set underscore attribute {name!r}")


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # jinja's own tojson HTML-escapes; HF templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@dataclasses.dataclass(frozen=True)
class RenderLimits:
  """Work one render may do. Real templates (Llama 3, Qwen, Gemma, ChatML) loop over messages and
  tools only: a few hundred iterations, a few kB of output, well under a millisecond each."""

  iterations: int = 1_000_000  # total items of all `range` loops
  seconds: float = 5.0
  output_chars: int = 4_000_000
  value_chars: int = 4_000_000  # longest string/list a `*`, `**` or `+` may build


class _Budget:
  def __init__(self, limits: RenderLimits):
    self.limits = limits
    self.deadline = time.monotonic() + limits.seconds
    self.iterations = 0

  def tick(self, n: int = 1) -> None:
    self.iterations += n
    if self.iterations > self.limits.iterations:
      raise _LimitExceeded(f"more than {self.limits.iterations} loop iterations")
    if time.monotonic() > self.deadline:
      raise _LimitExceeded(f"rendering took more than {self.limits.seconds} s")


class _LimitExceeded(jinja2.exceptions.TemplateError):
  pass


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget")


def _budget() -> _Budget:
  try:
    return _BUDGET.get()
  except LookupError:  # a template rendered outside render_chat_template: default limits
    budget = _Budget(RenderLimits())
    _BUDGET.set(budget)
    return budget


class _CountedRange:
  def __init__(self, r: range):
    self._range = r

  def __iter__(self):
    budget = _budget()
    for i in self._range:
      budget.tick()
      yield i

  def __len__(self):
    return len(self._range)


def _bounded_range(*args):
  r = range(*args)
  if len(r) > jinja2.sandbox.MAX_RANGE:
    raise _LimitExceeded(f"range of {len(r)} items (at most {jinja2.sandbox.MAX_RANGE})")
  return _CountedRange(r)


def _size(x: Any) -> int:
  return len(x) if isinstance(x, (str, bytes, list, tuple)) else 0


class _LimitedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
  intercepted_binops = frozenset(["*", "**", "+"])

  def call_binop(self, context, operator, left, right):
    budget = _budget()
    budget.tick(0)
    cap = budget.limits.value_chars
    if operator == "*":
      n = right if isinstance(right, int) else left if isinstance(left, int) else 1
      if max(_size(left), _size(right)) * max(int(n), 0) > cap:
        raise _LimitExceeded(f"a value of more than {cap} characters/items")
    elif operator == "**":
      if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(right) > 64:
        raise _LimitExceeded(f"exponent {right} (at most 64)")
    elif operator == "+" and _size(left) + _size(right) > cap:
      raise _LimitExceeded(f"a value of more than {cap} characters/items")
    return super().call_binop(context, operator, left, right)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
  env = _LimitedSandbox(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
  )
  env.globals["range"] = _bounded_range
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.globals["namespace"] = _Namespace
  env.globals["dict"] = dict
  return env.from_string(template)


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str | None] | None = None,
    limits: RenderLimits = RenderLimits(),
    where: str = "chat_template",
    **kwargs: Any,
) -> str:
  """Renders `messages` ([{"role", "content"}, ...]) as HF's apply_chat_template(tokenize=False).

  `limits` bounds the work (RenderLimits); `where` names the template's file in errors.
  """
  try:
    compiled = _compile(template)
  except jinja2.TemplateSyntaxError as e:
    raise InputError(where, f"is not a valid jinja2 template ({e})") from None
  budget = _Budget(limits)
  token = _BUDGET.set(budget)
  try:
    out, n = [], 0
    for chunk in compiled.generate(messages=list(messages),
                                   add_generation_prompt=add_generation_prompt,
                                   **dict(special_tokens or {}), **kwargs):
      n += len(chunk)
      if n > limits.output_chars:
        raise _LimitExceeded(f"more than {limits.output_chars} characters of output")
      budget.tick(0)
      out.append(chunk)
    return "".join(out)
  except _LimitExceeded as e:
    raise InputError(where, f"exceeds its render limit: {e}") from None
  except jinja2.TemplateError as e:
    raise InputError(where, f"failed to render: {e}") from None
  except (RecursionError, MemoryError, OverflowError) as e:
    raise InputError(where, f"failed to render ({type(e).__name__})") from None
  finally:
    _BUDGET.reset(token)
