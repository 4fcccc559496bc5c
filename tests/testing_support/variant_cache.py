"""One tiny checkpoint per variant, written on first use and reused by a module's tests."""

import pathlib
from typing import Any, Callable


def cached_by_variant(tmp_path_factory, write: Callable[[pathlib.Path, str], Any]
                      ) -> Callable[[str], Any]:
  """get(variant) -> write(fresh folder, variant), computed once per variant."""
  cache: dict[str, Any] = {}

  def get(variant: str) -> Any:
    if variant not in cache:
      cache[variant] = write(tmp_path_factory.mktemp(variant), variant)
    return cache[variant]

  return get
