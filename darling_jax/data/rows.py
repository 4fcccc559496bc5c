"""The uniform row schema every dataset is converted to, and strict jsonl reading.

A `Row` is one prompt of a dataset:

    prompt   str, or a tuple of chat messages ({"role": ..., "content": ...}, as in HF chat
             templates)
    answer   str or None: the gold answer column (MATH: the LaTeX answer; GSM8K: the worked
             solution ending in "#### 72", which the `gsm8k` quality function reads); None for
             open-ended sets
    extra    {column name: JSON value}: any further columns (ids, categories, difficulty, ...),
             passed to quality functions next to "answer"
    source   "file:line" of the record, so every downstream message can point back at the input

A `FieldMapping` says how a jsonl record (one JSON object per line) becomes a Row. Field paths are
dotted, with integer parts indexing lists: "question", "turns.0", "instances.0.input".

Malformed records (bad JSON, not an object, a missing field, a field of the wrong type) raise
`InputError` naming `file:line` and the problem. With `skip_malformed=True` they are skipped
instead, counted, and the first few are kept in the `ReadReport` for the log; nothing is ever
skipped silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

from darling_jax.errors import InputError

# Messages kept in a ReadReport: enough to diagnose a pattern, bounded for a huge bad file.
MAX_REPORTED_PROBLEMS = 20
CHAT_ROLES = ("system", "user", "assistant", "tool")

Message = Mapping[str, str]
Prompt = str | tuple[Message, ...]


@dataclasses.dataclass(frozen=True)
class Row:
  """One dataset prompt in the uniform schema (see the module docstring)."""

  prompt: Prompt
  answer: str | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  source: str = ""

  def columns(self) -> dict[str, Any]:
    """The quality-function columns of this row: "answer" plus the extra columns."""
    return {"answer": self.answer, **self.extra}

  def to_json(self) -> str:
    prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
    return json.dumps({"prompt": prompt, "answer": self.answer, "extra": dict(self.extra),
                       "source": self.source}, ensure_ascii=False, sort_keys=True)

  @classmethod
  def from_json(cls, data: str | bytes) -> Row:
    d = json.loads(data)
    prompt = d["prompt"] if isinstance(d["prompt"], str) else tuple(d["prompt"])
    return cls(prompt=prompt, answer=d["answer"], extra=d["extra"], source=d["source"])


def _check_path(path: str, what: str) -> str:
  if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
    raise InputError(what, f"field path must be a non-empty dotted name, got {path!r}")
  return path


@dataclasses.dataclass(frozen=True)
class FieldMapping:
  """How a jsonl record becomes a Row.

  Attributes:
    prompt: path of the prompt: a string, or a list of chat messages.
    answer: path of the gold answer (str, or a number: AMC23 stores 27.0, written "27"); None for
      datasets without one. When set, a record without it (missing, null or empty) is malformed.
    context: optional path of text appended to a string prompt after a blank line when present and
      non-empty (Self-Instruct / Alpaca "input"); a missing context is not an error.
    extra: (column name, path) pairs copied as extra columns; a missing one is malformed.
  """

  prompt: str
  answer: str | None = None
  context: str | None = None
  extra: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    _check_path(self.prompt, "FieldMapping.prompt")
    for name in ("answer", "context"):
      if getattr(self, name) is not None:
        _check_path(getattr(self, name), f"FieldMapping.{name}")
    names = [name for name, _ in self.extra]
    for name, path in self.extra:
      _check_path(path, f"FieldMapping.extra[{name!r}]")
      if not isinstance(name, str) or not name or name == "answer":
        raise InputError("FieldMapping.extra", f"bad column name {name!r} ('answer' is reserved)")
    if len(set(names)) != len(names):
      raise InputError("FieldMapping.extra", f"duplicate column names in {names}")

  @classmethod
  def from_spec(cls, prompt: str, answer: str | None = None, context: str | None = None,
                extra: Sequence[str] = ()) -> FieldMapping:
    """From CLI-style strings: extra items are "path" (column named after its last part) or
    "name=path"."""
    pairs = []
    for item in extra:
      name, sep, path = item.partition("=")
      pairs.append((name, path) if sep else (item.split(".")[-1], item))
    return cls(prompt=prompt, answer=answer, context=context, extra=tuple(pairs))

  def fingerprint(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)


_MISSING = object()


def _lookup(record: Any, path: str) -> Any:
  value = record
  for part in path.split("."):
    if isinstance(value, Mapping) and part in value:
      value = value[part]
    elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
      value = value[int(part)]
    else:
      return _MISSING
  return value


def _chat_messages(value: list, where: str) -> tuple[dict[str, str], ...]:
  if not value:
    raise InputError(where, "prompt is an empty list of chat messages")
  messages = []
  for i, m in enumerate(value):
    if (not isinstance(m, Mapping) or m.get("role") not in CHAT_ROLES
        or not isinstance(m.get("content"), str)):
      raise InputError(where, f"prompt message {i} is not {{'role': one of {CHAT_ROLES}, "
                              f"'content': str}}: {str(m)[:80]!r}")
    messages.append({"role": m["role"], "content": m["content"]})
  return tuple(messages)


def _answer_text(value: Any, where: str) -> str:
  if isinstance(value, str):
    if not value.strip():
      raise InputError(where, "answer is empty")
    return value
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise InputError(where, f"answer must be a string or a number, got {type(value).__name__}")
  if isinstance(value, float) and not math.isfinite(value):
    raise InputError(where, f"answer is not a finite number: {value!r}")
  # AMC23 stores 27.0: the gold answer is the integer 27.
  return str(int(value)) if float(value).is_integer() else repr(float(value))


def row_from_record(record: Any, mapping: FieldMapping, where: str) -> Row:
  """Converts one parsed JSON record; raises InputError(where, ...) when it is malformed."""
  if not isinstance(record, Mapping):
    raise InputError(where, f"expected a JSON object, got {type(record).__name__}")
  value = _lookup(record, mapping.prompt)
  if value is _MISSING:
    raise InputError(where, f"missing prompt field {mapping.prompt!r}")
  if isinstance(value, str):
    if not value.strip():
      raise InputError(where, f"prompt field {mapping.prompt!r} is empty")
    prompt: Prompt = value
    if mapping.context is not None:
      context = _lookup(record, mapping.context)
      if context not in (_MISSING, None, ""):
        if not isinstance(context, str):
          raise InputError(where, f"context field {mapping.context!r} must be a string")
        prompt = f"{value}\n\n{context}"
  elif isinstance(value, list):
    prompt = _chat_messages(value, where)
  else:
    raise InputError(where, f"prompt field {mapping.prompt!r} must be a string or a list of chat "
                            f"messages, got {type(value).__name__}")
  answer = None
  if mapping.answer is not None:
    value = _lookup(record, mapping.answer)
    if value is _MISSING or value is None:
      raise InputError(where, f"missing answer field {mapping.answer!r}")
    answer = _answer_text(value, where)
  extra = {}
  for name, path in mapping.extra:
    value = _lookup(record, path)
    if value is _MISSING:
      raise InputError(where, f"missing field {path!r} (extra column {name!r})")
    extra[name] = value
  return Row(prompt=prompt, answer=answer, extra=extra, source=where)


@dataclasses.dataclass
class ReadReport:
  """What reading one file found: rows kept, records skipped (only with skip_malformed)."""

  path: str
  num_rows: int = 0
  num_skipped: int = 0
  problems: list[str] = dataclasses.field(default_factory=list)  # first MAX_REPORTED_PROBLEMS

  def summary(self) -> str:
    text = f"{self.path}: {self.num_rows} rows"
    if self.num_skipped:
      text += f", {self.num_skipped} malformed skipped (first: {self.problems[0]})"
    return text


def iter_jsonl(path: str | os.PathLike, mapping: FieldMapping, *, skip_malformed: bool = False,
               report: ReadReport | None = None) -> Iterator[tuple[int, Row]]:
  """Yields (line number, Row) for each record of a jsonl file; blank lines are ignored.

  Raises:
    InputError: "file:line: problem" for the first malformed record (unless skip_malformed), or
      the file is missing/unreadable/not UTF-8.
  """
  path = pathlib.Path(path)
  report = report if report is not None else ReadReport(str(path))
  try:
    f = open(path, "rb")
  except OSError as e:
    raise InputError(path, f"cannot open dataset file: {e.strerror}") from None
  with f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        if not raw.strip():
          continue
        try:
          record = json.loads(raw)
        except UnicodeDecodeError:
          raise InputError(where, "line is not valid UTF-8") from None
        except json.JSONDecodeError as e:
          raise InputError(where, f"bad JSON ({e.msg} at column {e.colno})") from None
        row = row_from_record(record, mapping, where)
      except InputError as e:
        if not skip_malformed:
          raise
        report.num_skipped += 1
        if len(report.problems) < MAX_REPORTED_PROBLEMS:
          report.problems.append(str(e))
        continue
      report.num_rows += 1
      yield lineno, row


def read_jsonl(path: str | os.PathLike, mapping: FieldMapping, *,
               skip_malformed: bool = False) -> tuple[list[Row], ReadReport]:
  """All rows of a jsonl file, and the report (see `iter_jsonl`)."""
  report = ReadReport(str(path))
  rows = [row for _, row in iter_jsonl(path, mapping, skip_malformed=skip_malformed, report=report)]
  return rows, report
