"""The one error type users see for bad input.

Every loader, config parser and dataset reader raises `InputError` naming the file, field or value at
fault, so a user gets one readable line instead of a traceback from deep inside numpy or XLA.
"""

from __future__ import annotations

import os


class InputError(ValueError):
  """Bad user input: a missing/corrupt file, an unknown field, a value out of range."""

  def __init__(self, where: str | os.PathLike | None, problem: str):
    self.where = None if where is None else str(where)
    self.problem = problem
    super().__init__(problem if where is None else f"{where}: {problem}")


def parse_enum(enum_type: type, value, where: str):
  """`enum_type(value)` (members or their string values), or an InputError listing the choices."""
  try:
    return enum_type(value)
  except ValueError:
    raise InputError(where, f"unknown value {value!r}; choose from "
                     f"{[m.value for m in enum_type]}") from None
