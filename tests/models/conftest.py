"""Fixtures for model tests."""

import pytest
from testing_support.hf_decoders import write_tiny_decoder
from testing_support.variant_cache import cached_by_variant


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory):
  return cached_by_variant(tmp_path_factory, write_tiny_decoder)
