"""Fixtures for model tests."""

import pathlib

import pytest
from testing_support.hf_decoders import write_tiny_decoder


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory):
  cache = {}

  def get(variant: str) -> pathlib.Path:
    if variant not in cache:
      cache[variant] = write_tiny_decoder(tmp_path_factory.mktemp(variant), variant)
    return cache[variant]

  return get
