"""Where the local dataset folder and the TFDS build cache are.

Nothing is downloaded, ever: every dataset is built from jsonl files in a local folder laid out like
the repository's `../shared/data` (gsm8k/test.jsonl, math500/test.jsonl, ...; see its README.md).

Data folder, first that applies:
  1. the explicit `data_dir` argument (CLI `--data-dir`);
  2. the `DARLING_DATA_DIR` environment variable;
  3. `<repo>/../shared/data`, when darling_jax runs from a source checkout that has it.
Otherwise `InputError` says how to point at one.

Build cache (TFDS array_record files), first that applies: the `cache_dir` argument, the
`DARLING_TFDS_DIR` environment variable, `~/.cache/darling_jax/tfds`.
"""

from __future__ import annotations

import os
import pathlib

from darling_jax.errors import InputError

DATA_DIR_ENV = "DARLING_DATA_DIR"
CACHE_DIR_ENV = "DARLING_TFDS_DIR"


def repo_shared_data() -> pathlib.Path:
  """`<repo>/../shared/data` for a source checkout (the package folder's grandparent's sibling)."""
  repo = pathlib.Path(__file__).resolve().parents[2]
  return repo.parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The local dataset folder (see the module docstring for the search order).

  Raises:
    InputError: the chosen folder does not exist, or none was given and no default exists.
  """
  if data_dir is not None:
    where, path = "data_dir", pathlib.Path(data_dir).expanduser()
  elif os.environ.get(DATA_DIR_ENV):
    where, path = DATA_DIR_ENV, pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser()
  else:
    path = repo_shared_data()
    if path.is_dir():
      return path
    raise InputError("data_dir", f"no local dataset folder: pass --data-dir / data_dir=..., or set "
                                 f"{DATA_DIR_ENV} (the default {path} does not exist)")
  if not path.is_dir():
    raise InputError(where, f"dataset folder {path} does not exist")
  return path


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The TFDS build cache folder (created on first build, not here)."""
  if cache_dir is not None:
    return pathlib.Path(cache_dir).expanduser()
  if os.environ.get(CACHE_DIR_ENV):
    return pathlib.Path(os.environ[CACHE_DIR_ENV]).expanduser()
  return pathlib.Path("~/.cache/darling_jax/tfds").expanduser()
