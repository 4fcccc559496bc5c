"""Chat templates rendered with jinja2 exactly as HF `apply_chat_template` renders them.

Templates come from checkpoints, i.e. untrusted: they run in jinja2's immutable sandbox, and namespaces
refuse underscore attributes, as transformers does.
"""

from __future__ import annotations

import datetime
import functools
import json
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


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
  )
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
    **kwargs: Any,
) -> str:
  """Renders `messages` ([{"role", "content"}, ...]) as HF's apply_chat_template(tokenize=False)."""
  try:
    compiled = _compile(template)
  except jinja2.TemplateSyntaxError as e:
    raise InputError("chat_template", f"is not a valid jinja2 template ({e})") from None
  try:
    return compiled.render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        **dict(special_tokens or {}),
        **kwargs,
    )
  except jinja2.TemplateError as e:
    raise InputError("chat_template", f"failed to render: {e}") from None
