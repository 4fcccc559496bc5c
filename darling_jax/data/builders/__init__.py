"""TFDS builds of the prompt datasets and random-access row sources over them.

    source = load_split("gsm8k", "test")               # a registry name, or a DatasetSpec
    len(source), source[0].prompt, source[0].answer    # Rows, random access (grain-ready)

The first call builds `<cache_dir>/darling_prompts/<name>-<digest>/1.0.0/*.array_record` from the
local jsonl (seconds for the small sets); later calls reuse it. This package imports
tensorflow_datasets: import it only where datasets are read (the GPU image lacks tfds).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from typing import Sequence, overload

import tensorflow_datasets as tfds

from darling_jax.data.builders.prompts import (
    DarlingPrompts, PromptsConfig, make_config, read_reports)
from darling_jax.data.local_data import resolve_cache_dir, resolve_data_dir
from darling_jax.data.registry import DatasetSpec, get_dataset
from darling_jax.data.rows import ReadReport, Row
from darling_jax.errors import InputError

_log = logging.getLogger(__name__)

__all__ = ["DarlingPrompts", "PromptsConfig", "RowSource", "build_dataset", "load_split",
           "read_reports"]


class RowSource(Sequence[Row]):
  """Random access to the Rows of one built split (a grain-compatible data source)."""

  def __init__(self, data_source, name: str, split: str, report: ReadReport | None):
    self._source = data_source
    self.name = name
    self.split = split
    self.report = report

  def __len__(self) -> int:
    return len(self._source)

  @overload
  def __getitem__(self, index: int) -> Row: ...
  @overload
  def __getitem__(self, index: slice) -> list[Row]: ...

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"{self!r}: index {index} out of range")  # ends Sequence iteration
    return Row.from_json(self._source[index % n]["row"])

  def __repr__(self) -> str:
    return f"RowSource({self.name}/{self.split}, {len(self)} rows)"


class _DropExpectedTfdsNotes(logging.Filter):
  """TFDS notes that are expected here: every config is a custom one, and a new build's folder has
  no dataset_info.json until it is written."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Using custom data configuration")
                or message.endswith("has no dataset_info.json"))


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's build chatter to stderr (CLI stdout stays machine-readable), no progress bars."""
  was_active = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
  note_filter = _DropExpectedTfdsNotes()
  absl_logger = logging.getLogger("absl")
  tfds.display_progress_bar(False)  # per-split bars are noise for builds of a few seconds
  absl_logger.addFilter(note_filter)
  try:
    with contextlib.redirect_stdout(sys.stderr):
      yield
  finally:
    absl_logger.removeFilter(note_filter)
    tfds.display_progress_bar(was_active)


def _spec(dataset: str | DatasetSpec) -> DatasetSpec:
  return dataset if isinstance(dataset, DatasetSpec) else get_dataset(dataset)


def build_dataset(dataset: str | DatasetSpec, *, data_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  skip_malformed: bool | None = None,
                  splits: Sequence[str] | None = None) -> DarlingPrompts:
  """Builds (or finds the existing build of) the splits of a dataset.

  Args:
    dataset: a registry name or a spec (`registry.custom_dataset(...)` for a user's file).
    data_dir: local data folder for relative paths (see `local_data.resolve_data_dir`); unused when
      every file path is absolute.
    cache_dir: TFDS build folder (see `local_data.resolve_cache_dir`).
    skip_malformed: skip and count malformed records instead of raising InputError(file:line);
      None: the dataset's default (`DatasetSpec.skip_malformed`, False except math_train).
    splits: build only these splits (a build of its own: evaluating GSM8K test does not pay for
      building train); None: all.

  Returns:
    The prepared builder (`builder.as_data_source(split)` reads it).
  """
  spec = _spec(dataset)
  needs_data_dir = any(not pathlib.Path(p).is_absolute() for p in spec.files.values())
  root = resolve_data_dir(data_dir) if needs_data_dir else None
  files = {split: spec.file(split, root) for split in (spec.splits if splits is None else splits)}
  for path in files.values():
    if not path.is_file():
      raise InputError(path, f"dataset file of {spec.name!r} does not exist")
  if skip_malformed is None:
    skip_malformed = spec.skip_malformed
  config = make_config(spec.name, files, spec.mapping, skip_malformed)
  with _quiet_tfds():
    builder = DarlingPrompts(config=config, data_dir=str(resolve_cache_dir(cache_dir)),
                             file_format="array_record")
    if not builder.is_prepared():
      _log.info("building %s into %s", spec.name, builder.data_dir)
      builder.download_and_prepare()
  for split, report in read_reports(builder).items():
    if report.num_skipped:
      _log.warning("%s/%s: %s", spec.name, split, report.summary())
  return builder


def load_split(dataset: str | DatasetSpec, split: str, *,
               data_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None,
               skip_malformed: bool | None = None) -> RowSource:
  """The Rows of one split, built on first use (arguments as in `build_dataset`)."""
  spec = _spec(dataset)
  if split not in spec.files:
    raise InputError(f"dataset {spec.name!r}", f"has no split {split!r}; splits: {spec.splits}")
  builder = build_dataset(spec, data_dir=data_dir, cache_dir=cache_dir,
                          skip_malformed=skip_malformed, splits=(split,))
  return RowSource(builder.as_data_source(split), spec.name, split,
                   read_reports(builder).get(split))
