"""pass@k curve PNG."""

import pytest

from darling_jax.errors import InputError
from darling_jax.evaluation.plots import plot_pass_at_k


def test_writes_png_with_several_curves(tmp_path):
  path = plot_pass_at_k({"base": {"1": 0.2, "2": 0.3, "4": 0.45},
                         "darling": {1: 0.25, 2: 0.4, 4: 0.6}}, tmp_path / "sub" / "curve.png")
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_empty_input_is_refused(tmp_path):
  with pytest.raises(InputError, match="no curves"):
    plot_pass_at_k({}, tmp_path / "x.png")
  with pytest.raises(InputError, match="'a' is empty"):
    plot_pass_at_k({"a": {}}, tmp_path / "x.png")
