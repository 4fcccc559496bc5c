"""The names README.md documents resolve, and `import darling_jax` stays light."""

import subprocess
import sys

import darling_jax


def test_exports_resolve():
  for name in darling_jax.__all__:
    assert getattr(darling_jax, name) is not None


def test_import_does_not_load_jax():
  code = "import sys, darling_jax; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_cli_help_lists_every_verb():
  out = subprocess.run([sys.executable, "-m", "darling_jax", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for verb in ("generate", "train", "eval", "classifier", "plan", "demo"):
    assert verb in out
