"""Tests `darling_jax/cli/classifier.py`: a tiny train + eval through `darling-jax classifier`."""

import importlib.util
import json
import pathlib

import numpy as np

from darling_jax.cli import main as cli

_spec = importlib.util.spec_from_file_location(
    "diversity_tiny_classifier",
    pathlib.Path(__file__).parents[1] / "diversity" / "tiny_classifier.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def _write_pairs(path, n=20):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for k in range(n):
      a = tiny.text(rng, 10)
      similar = k % 3 == 0
      b = a if similar else tiny.text(rng, 10)
      f.write(json.dumps({"generation_0": a, "generation_1": b, "similar": int(similar)}) + "\n")
  return path


def test_train_then_eval(tmp_path, capsys):
  enc = tiny.write_encoder_folder(tmp_path / "enc")
  pairs = _write_pairs(tmp_path / "pairs.jsonl")
  out = tmp_path / "clf"
  rc = cli.main(["classifier", "train", "--pairs", str(pairs), "--out", str(out), "--init",
                 str(enc), "--steps", "20", "--micro-batch", "16"])
  assert rc == 0
  train_json = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 0.0 <= train_json["threshold"] <= 1.0
  assert (out / "val.jsonl").exists() and (out / "checkpoint").exists()
  rc = cli.main(["classifier", "eval", "--checkpoint", str(out), "--pairs", str(pairs)])
  assert rc == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert {"accuracy", "auc", "threshold"} <= set(result)
  assert result["n"] == 20 and 0.0 <= result["accuracy"] <= 1.0
  assert result["auc"] > 0.9  # identical answers vs random ones: trivially separable


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
  rc = cli.main(["classifier", "eval", "--checkpoint", str(tmp_path), "--pairs",
                 str(tmp_path / "none.jsonl")])
  assert rc == 2
  assert "none.jsonl: file not found" in capsys.readouterr().err
  pairs = _write_pairs(tmp_path / "pairs.jsonl", n=4)
  rc = cli.main(["classifier", "eval", "--checkpoint", str(tmp_path), "--pairs", str(pairs)])
  assert rc == 2 and "classifier.json" in capsys.readouterr().err
  rc = cli.main(["classifier", "train", "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                 "--recipe", "nope"])
  assert rc == 2 and "unknown recipe" in capsys.readouterr().err


def test_threshold_outside_unit_interval_is_refused(tmp_path, capsys):
  pairs = _write_pairs(tmp_path / "pairs.jsonl", n=4)
  rc = cli.main(["classifier", "train", "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                 "--threshold", "1.5"])
  assert rc == 2 and "--threshold: must be a number in [0, 1]" in capsys.readouterr().err
  rc = cli.main(["classifier", "eval", "--checkpoint", str(tmp_path), "--pairs", str(pairs),
                 "--threshold", "-0.2"])
  assert rc == 2 and "--threshold" in capsys.readouterr().err
