"""The eval runner end to end with an injected sampler: files, metrics, dropped prompts, novelty."""

import json
import pathlib

import numpy as np
import pytest

from darling_jax.data.rows import FieldMapping, read_jsonl
from darling_jax.data.registry import get_dataset
from darling_jax.errors import InputError
from darling_jax.evaluation.runner import EvalConfig, run_eval

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared data) is absent")


class WordTokenizer:
  chat_template = "toy"
  pad_token_id = 0

  def apply_chat_template(self, messages, *, add_generation_prompt=True):
    return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"

  def encode(self, text, add_special_tokens=False):
    return list(range(len(text.split())))


def scripted_generate(script):
  """A sampler stand-in: completions chosen by which prompt text contains which key."""
  calls = []

  def generate(model, tokenizer, prompts, *, num_samples, max_new_tokens, temperature, top_p,
               seed, batch_size):
    calls.append(dict(n=num_samples, temperature=temperature, top_p=top_p, prompts=prompts))
    out = []
    for text in prompts:
      [group] = [g for key, g in script.items() if key in text]
      assert len(group) == num_samples
      out.append(list(group))
    return out

  generate.calls = calls
  return generate


@needs_shared
def test_math_run_writes_results_summary_and_plot(tmp_path):
  rows, _ = read_jsonl(SHARED / "gsm8k/test.jsonl", get_dataset("gsm8k").mapping)
  golds = [row.answer.rsplit("####", 1)[1].strip() for row in rows[:3]]
  # Sample 0 is right, samples 1-3 all say 0 (wrong, and the majority).
  script = {row.prompt[:60]: [f"so #### {gold}", "#### 0", "#### 0", "I think 0"]
            for row, gold in zip(rows[:3], golds)}
  generate = scripted_generate(script)
  config = EvalConfig(model="unused", dataset="gsm8k", limit=3, num_samples=4,
                      output_dir=str(tmp_path / "out"), data_dir=str(SHARED),
                      cache_dir=str(tmp_path / "cache"))
  summary = run_eval(config, generate=generate, model=object(), tokenizer=WordTokenizer())
  [call] = generate.calls
  assert (call["n"], call["temperature"], call["top_p"]) == (4, 0.6, 0.95)  # the paper's math
  assert "within \\boxed{}" in call["prompts"][0] and call["prompts"][0].startswith("<user> ")
  assert summary["pass@k"] == {"1": 0.25, "2": 0.5, "4": 1.0}
  assert summary["maj@k"]["4"] == 0.0 and summary["maj@k"]["1"] == pytest.approx(0.25)
  assert (summary["prompts_evaluated"], summary["prompts_dropped"]) == (3, 0)
  assert summary["quality"] == "gsm8k" and summary["length_unit"] == "tokens"
  out = tmp_path / "out"
  records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert len(records) == 3 and records[0]["correct"] == [True, False, False, False]
  assert records[0]["source"].endswith("gsm8k/test.jsonl:1")
  assert records[2]["completions"][0] == f"so #### {golds[2]}"
  assert json.loads((out / "summary.json").read_text())["pass@k"] == summary["pass@k"]
  assert (out / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_custom_jsonl_drops_overlong_prompts(tmp_path):
  data = tmp_path / "mine.jsonl"
  data.write_text("".join(json.dumps({"q": q, "sol": a}) + "\n" for q, a in [
      ("What is two plus two?", "4"), ("word " * 200 + "tell me", "1"),
      ("Three times three?", "9")]))
  script = {"two plus": ["\\boxed{4}", "\\boxed{5}"], "Three times": ["\\boxed{9}", "\\boxed{9}"]}
  config = EvalConfig(model="unused", dataset=str(data), prompt_field="q", answer_field="sol",
                      num_samples=2, max_prompt_tokens=64, maj=False,
                      output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
  summary = run_eval(config, generate=scripted_generate(script), model=object(),
                     tokenizer=WordTokenizer())
  assert (summary["prompts_evaluated"], summary["prompts_dropped"]) == (2, 1)
  assert summary["pass@k"] == {"1": 0.75, "2": 1.0} and "maj@k" not in summary
  assert summary["dataset"] == "mine" and summary["quality"] == "math_verify"


@needs_shared
def test_novelty_run(tmp_path):
  rows, _ = read_jsonl(SHARED / "noveltybench/curated.jsonl",
                       get_dataset("noveltybench_curated").mapping)
  script = {rows[0].prompt: ["A story.", "a  story.", "Another story."],
            rows[1].prompt: ["x", "y", "z"]}
  generate = scripted_generate(script)
  config = EvalConfig(model="unused", dataset="noveltybench_curated", limit=2, num_samples=3,
                      output_dir=str(tmp_path / "out"), data_dir=str(SHARED),
                      cache_dir=str(tmp_path / "cache"))
  summary = run_eval(config, generate=generate, model=object(), tokenizer=WordTokenizer())
  assert generate.calls[0]["temperature"] == 1.0 and generate.calls[0]["top_p"] == 1.0
  assert summary["distinct"] == 2.5 and summary["equivalence"] == "exact"
  p = 0.8
  assert summary["utility"] == pytest.approx(((1 + p**2) + (1 + p + p**2)) / 2 / (1 + p + p**2))
  records = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
  assert records[0]["classes"] == [0, 0, 2] and records[0]["generations"][2] == "Another story."
  assert records[1]["extra"]["category"] == rows[1].extra["category"]
  assert not (tmp_path / "out/pass_at_k.png").exists()


def test_config_errors(tmp_path):
  with pytest.raises(InputError, match="num_samples"):
    EvalConfig(model="m", dataset="gsm8k", num_samples=0)
  with pytest.raises(InputError, match="unknown scorer"):
    EvalConfig(model="m", dataset="gsm8k", equivalence="bleu")
  data = tmp_path / "x.jsonl"
  data.write_text('{"q": "hi"}\n')
  with pytest.raises(InputError, match="--prompt-field"):
    EvalConfig(model="m", dataset=str(data)).dataset_spec()
  assert EvalConfig(model="m", dataset=str(data), prompt_field="q").dataset_spec().mapping == \
      FieldMapping(prompt="q")


@needs_shared
def test_novelty_with_a_learned_classifier(tmp_path):
  """--equivalence classifier: the runner's classes are the greedy partition of the classifier's
  probabilities at its calibrated threshold."""
  import importlib.util

  from darling_jax.diversity import greedy_classes
  from darling_jax.diversity.classifier import PairMode
  from darling_jax.diversity.classifier_io import save_classifier
  from darling_jax.diversity.pair_scoring import PairScorer

  spec = importlib.util.spec_from_file_location(
      "tiny_classifier", pathlib.Path(__file__).resolve().parents[1] / "diversity/tiny_classifier.py")
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  clf = tiny.classifier(PairMode.BI, threshold=0.5, max_tokens=16)  # windows fit 64 positions
  tok_folder = tiny.write_encoder_folder(tmp_path / "enc")
  folder = save_classifier(clf, tok_folder, tmp_path / "clf", {})
  rows, _ = read_jsonl(SHARED / "noveltybench/curated.jsonl",
                       get_dataset("noveltybench_curated").mapping)
  groups = [["w1 w2 w3 w4 w5 w6", "w1 w2 w3 w4 w5 w7", "w50 w51 w52 w53 w54 w55", "w1 w2 w3 w4 w5 w6"],
            ["w10 w11 w12 w13 w14 w15", "w60 w61 w62 w63 w64 w65", "w70 w71 w72 w73 w74 w75",
             "w10 w11 w12 w13 w14 w15"]]
  script = {rows[0].prompt: groups[0], rows[1].prompt: groups[1]}
  config = EvalConfig(model="unused", dataset="noveltybench_curated", limit=2, num_samples=4,
                      output_dir=str(tmp_path / "out"), data_dir=str(SHARED),
                      cache_dir=str(tmp_path / "cache"), equivalence="classifier",
                      classifier=str(folder))
  summary = run_eval(config, generate=scripted_generate(script), model=object(),
                     tokenizer=WordTokenizer())
  probs = np.asarray(PairScorer(clf, tiny.tokenizer())(groups))
  want = np.asarray(greedy_classes(np.asarray(probs) > 0.5))
  records = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
  assert [r["classes"] for r in records] == want.tolist()
  assert summary["equivalence"] == "classifier" and summary["threshold"] == 0.5
  assert records[0]["classes"][3] == 0  # identical answers always share a class
