"""`darling-jax generate` on a tiny exported checkpoint, and the real SmolLM2 GGUF's "Paris"."""

import importlib.util
import pathlib

import pytest

from darling_jax.cli.main import main
from darling_jax.models.hf_decoder import export_hf

_spec = importlib.util.spec_from_file_location(
    "sampling_tiny_checkpoints",
    pathlib.Path(__file__).parent.parent / "sampling" / "tiny_checkpoints.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny") / "model"
  export_hf(tiny.spiky_decoder(), folder, tokenizer=tiny.word_tokenizer())
  return folder


def test_generate_prints_each_sample(tiny_folder, capsys):
  code = main(["generate", "--model", str(tiny_folder), "--prompt", "t1 t9 t14", "--num-samples",
               "3", "--max-new-tokens", "5", "--temperature", "0.9", "--top-p", "0.95",
               "--seed", "3"])
  assert code == 0
  out = capsys.readouterr().out
  assert [line for line in out.splitlines() if line.startswith("--- sample")] == [
      f"--- sample {i}/3 ---" for i in (1, 2, 3)]
  words = " ".join(line for line in out.splitlines() if not line.startswith("--- sample")).split()
  assert words and set(words) <= {f"t{i}" for i in range(tiny.VOCAB)}


def test_generate_reports_bad_options_in_one_line(tiny_folder, capsys):
  code = main(["generate", "--model", str(tiny_folder), "--prompt", "t1", "--top-p", "1.5"])
  assert code == 2
  assert "sampler.top_p" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_gguf_knows_the_capital_of_france(capsys):
  code = main(["generate", "--chat", "--greedy", "--prompt", "What is the capital of France?",
               "--max-new-tokens", "16"])
  assert code == 0
  assert "Paris" in capsys.readouterr().out
