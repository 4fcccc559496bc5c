"""Where the data folder and the TFDS cache are: argument, environment, repo default, errors."""

import pathlib

import pytest

from darling_jax.data import local_data
from darling_jax.errors import InputError


def test_explicit_then_env_then_default(tmp_path, monkeypatch):
  explicit, env = tmp_path / "explicit", tmp_path / "env"
  explicit.mkdir()
  env.mkdir()
  monkeypatch.setenv(local_data.DATA_DIR_ENV, str(env))
  assert local_data.resolve_data_dir(explicit) == explicit
  assert local_data.resolve_data_dir() == env
  monkeypatch.delenv(local_data.DATA_DIR_ENV)
  default = local_data.repo_shared_data()
  assert default == pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
  if default.is_dir():
    assert local_data.resolve_data_dir() == default


def test_missing_folders_are_input_errors(tmp_path, monkeypatch):
  with pytest.raises(InputError, match="data_dir: dataset folder .* does not exist"):
    local_data.resolve_data_dir(tmp_path / "nope")
  monkeypatch.setenv(local_data.DATA_DIR_ENV, str(tmp_path / "nope"))
  with pytest.raises(InputError, match="DARLING_DATA_DIR"):
    local_data.resolve_data_dir()
  monkeypatch.delenv(local_data.DATA_DIR_ENV)
  monkeypatch.setattr(local_data, "repo_shared_data", lambda: tmp_path / "no_shared")
  with pytest.raises(InputError, match="no local dataset folder"):
    local_data.resolve_data_dir()


def test_cache_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(local_data.CACHE_DIR_ENV, raising=False)
  assert local_data.resolve_cache_dir(tmp_path) == tmp_path
  assert local_data.resolve_cache_dir().parts[-3:] == (".cache", "darling_jax", "tfds")
  monkeypatch.setenv(local_data.CACHE_DIR_ENV, str(tmp_path / "c"))
  assert local_data.resolve_cache_dir() == tmp_path / "c"
