"""Executes notebooks/darling_demo.ipynb headless on a shortened setting (1 seed, 2 steps)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_demo_notebook_runs(tmp_path):
  from darling_jax.data.local_data import resolve_data_dir
  from darling_jax.errors import InputError

  try:
    pairs = resolve_data_dir() / "noveltybench" / "classifier_pairs_train.jsonl"
  except InputError as e:
    pytest.skip(f"the default classifier's human-labelled pairs are not here: {e}")
  if not pairs.exists():
    pytest.skip(f"the default classifier's human-labelled pairs are missing: {pairs}")
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(REPO / "notebooks" / "darling_demo.ipynb", as_version=4)
  env = {"DARLING_NB_SEEDS": "0", "DARLING_NB_STEPS": "2", "DARLING_NB_OUT": str(tmp_path / "demo"),
         "DARLING_NB_OVERRIDES": "eval.every=2 eval.num_samples=4",
         "XLA_FLAGS": ""}  # the kernel is a user's session: one device, not the tests' eight
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  report = tmp_path / "demo" / "report.md"
  assert report.exists() and "| pass@1 |" in report.read_text()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
