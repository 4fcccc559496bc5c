"""TFDS array_record builds of jsonl prompt sets: contents, determinism, caching, bad input."""

import json
import pathlib

import pytest

from darling_jax.data import registry
from darling_jax.data.builders import build_dataset, load_split
from darling_jax.data.rows import FieldMapping, read_jsonl
from darling_jax.errors import InputError

SHARED = pathlib.Path(__file__).resolve().parents[3].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared data) is absent")


def _dataset(tmp_path, lines, name="toy"):
  path = tmp_path / f"{name}.jsonl"
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  mapping = FieldMapping.from_spec("q", "a", extra=["id"])
  return path, registry.custom_dataset(path, mapping, name=name, split="train")


GOOD = [json.dumps({"q": f"question {i} é", "a": str(i), "id": i}) for i in range(12)]


def test_build_matches_jsonl_and_is_cached(tmp_path):
  path, spec = _dataset(tmp_path, GOOD)
  source = load_split(spec, "train", cache_dir=tmp_path / "cache")
  expected, _ = read_jsonl(path, spec.mapping)
  assert len(source) == 12 and list(source) == expected  # file order, every field
  assert source[-1].extra == {"id": 11} and source[3:5] == expected[3:5]
  assert source.report.num_rows == 12 and source.report.num_skipped == 0
  files = sorted((tmp_path / "cache").rglob("*.array_record*"))
  assert files and all(f.suffix != ".tfrecord" for f in files)
  # Same inputs: the existing build is found (no rebuild: the files are untouched).
  mtimes = [f.stat().st_mtime_ns for f in files]
  builder = build_dataset(spec, cache_dir=tmp_path / "cache")
  assert builder.is_prepared()
  assert [f.stat().st_mtime_ns for f in files] == mtimes
  with pytest.raises(IndexError):
    source[12]


def test_build_is_deterministic(tmp_path):
  _, spec = _dataset(tmp_path, GOOD)
  a = build_dataset(spec, cache_dir=tmp_path / "a")
  b = build_dataset(spec, cache_dir=tmp_path / "b")
  assert a.builder_config.name == b.builder_config.name
  files_a = sorted(pathlib.Path(a.data_dir).glob("*.array_record*"))
  files_b = sorted(pathlib.Path(b.data_dir).glob("*.array_record*"))
  assert [f.name for f in files_a] == [f.name for f in files_b]
  assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]


def test_changed_file_or_mapping_gets_a_new_build(tmp_path):
  path, spec = _dataset(tmp_path, GOOD)
  first = build_dataset(spec, cache_dir=tmp_path / "cache").builder_config.name
  path.write_text(path.read_text() + json.dumps({"q": "new", "a": "1", "id": 99}) + "\n")
  second = build_dataset(spec, cache_dir=tmp_path / "cache")
  assert second.builder_config.name != first
  assert len(load_split(spec, "train", cache_dir=tmp_path / "cache")) == 13
  other = registry.custom_dataset(path, FieldMapping(prompt="q"), name="toy", split="train")
  assert build_dataset(other, cache_dir=tmp_path / "cache").builder_config.name not in (
      first, second.builder_config.name)


def test_malformed_refused_with_file_line_unless_skipped(tmp_path):
  path, spec = _dataset(tmp_path, GOOD[:3] + ['{"q": "no answer", "id": 3}'] + GOOD[4:6])
  with pytest.raises(InputError, match=rf"{path}:4: missing answer field 'a'"):
    load_split(spec, "train", cache_dir=tmp_path / "cache")
  # Nothing half-built is left where a later load could find it.
  assert not list((tmp_path / "cache").rglob("*.array_record*"))
  source = load_split(spec, "train", cache_dir=tmp_path / "cache", skip_malformed=True)
  assert [r.answer for r in source] == ["0", "1", "2", "4", "5"]
  assert source.report.num_skipped == 1
  assert source.report.problems == [f"{path}:4: missing answer field 'a'"]
  # The report is stored with the build: a cached load still knows what was skipped.
  again = load_split(spec, "train", cache_dir=tmp_path / "cache", skip_malformed=True)
  assert again.report.num_skipped == 1


def test_empty_file_is_one_error_naming_it(tmp_path):
  path, spec = _dataset(tmp_path, [], name="empty")
  with pytest.raises(InputError, match=r"empty.jsonl: has no rows for the 'train' split"):
    load_split(spec, "train", cache_dir=tmp_path / "cache")
  path, spec = _dataset(tmp_path, ["{not json"], name="bad")
  with pytest.raises(InputError, match=r"has no valid rows for the 'train' split .1 malformed skipped"):
    load_split(spec, "train", cache_dir=tmp_path / "cache", skip_malformed=True)


def test_bad_split_and_missing_file(tmp_path):
  path, spec = _dataset(tmp_path, GOOD)
  with pytest.raises(InputError, match="has no split 'test'"):
    load_split(spec, "test", cache_dir=tmp_path / "cache")
  path.unlink()
  with pytest.raises(InputError, match="does not exist"):
    load_split(spec, "train", cache_dir=tmp_path / "cache")


@needs_shared
def test_real_registry_datasets(tmp_path):
  aime = load_split("aime24", "test", data_dir=SHARED, cache_dir=tmp_path)
  amc = load_split("amc23", "test", data_dir=SHARED, cache_dir=tmp_path)
  assert (len(aime), len(amc)) == (30, 40)
  assert aime[0].answer == "204" and amc[0].answer == "27"
  assert aime[0].source == f"{SHARED / 'competition_math/aime24.jsonl'}:1"
