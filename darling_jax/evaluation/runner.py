"""End-to-end evaluation: dataset -> prompts -> samples -> metrics -> files.

`run_eval(EvalConfig(model=..., dataset=...))` is what `darling-jax eval` calls:

  1. rows of the dataset split (a registry name, or a .jsonl file with a field mapping), the first
     `limit` of them;
  2. prompts through the dataset's template and the tokenizer's chat template; prompts longer than
     `max_prompt_tokens` are dropped and counted (`prompts_dropped` in the summary);
  3. `num_samples` completions per prompt from `darling_jax.sampling.generate_texts` (or the
     injected `generate`, same signature);
  4. math sets: pass@k / maj@k / length (`math_eval`), per-problem jsonl, summary JSON and a
     pass@k + maj@k curve PNG; open-ended sets: NoveltyBench distinct / utility (`novelty`),
     per-prompt jsonl (with the generations) and summary JSON.

Output files in `output_dir`: results.jsonl, summary.json, and pass_at_k.png for math.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import pathlib
import time
from typing import Any, Callable, Sequence

from darling_jax.data.registry import DatasetSpec, Task, custom_dataset, get_dataset
from darling_jax.data.rows import FieldMapping, Row
from darling_jax.errors import InputError

_log = logging.getLogger(__name__)

# generate(model, tokenizer, prompts, *, num_samples, max_new_tokens, temperature, top_p, seed,
#          batch_size) -> [P][N] texts: darling_jax.sampling.generate_texts' signature.
GenerateFn = Callable[..., list[list[str]]]

# Sampling defaults per task: the paper's math evaluation (T = 0.6, top-p 0.95) and NoveltyBench
# (T = 1, no nucleus truncation, k = 10 generations).
TASK_DEFAULTS = {
    Task.MATH: {"temperature": 0.6, "top_p": 0.95, "num_samples": 16},
    Task.OPEN_ENDED: {"temperature": 1.0, "top_p": 1.0, "num_samples": 10},
}


class Equivalence(enum.Enum):
  """Novelty pair scorers the CLI can name."""

  EXACT = "exact"  # case- and whitespace-insensitive string equality (a classifier-free baseline)
  CLASSIFIER = "classifier"  # a learned pair classifier (`classifier`: its folder, or "default")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """One evaluation run.

  Attributes:
    model: HF model folder or .gguf file.
    dataset: registry name (`darling_jax.data.dataset_names()`) or a .jsonl path (then
      `prompt_field`, and `answer_field` for math, say which fields to read).
    split: dataset split; None: "test" if the dataset has one, else its first split.
    num_samples: N completions per prompt; None: 16 for math, 10 (NoveltyBench's k) open-ended.
    max_new_tokens: generation budget per completion.
    temperature: None: 0.6 for math (the paper), 1.0 open-ended.
    top_p: None: 0.95 for math (the paper), 1.0 open-ended.
    seed: sampling seed.
    batch_size: prompts per sampler call.
    limit: evaluate only the first `limit` prompts (None: all).
    max_prompt_tokens: longer prompts are dropped and counted.
    output_dir: where results.jsonl, summary.json and pass_at_k.png go.
    data_dir: local dataset folder (see darling_jax.data.local_data).
    cache_dir: TFDS build folder.
    dtype: model compute dtype ("float32" or "bfloat16").
    prompt_field / answer_field / extra_fields: field mapping of a .jsonl dataset.
    quality: quality function name (darling_jax.rewards.BUILTINS); None: the dataset's (math) or
      none (novelty: u_i = 1).
    equivalence: novelty pair scorer ("exact": case/whitespace-insensitive equality).
    classifier: with equivalence "classifier": a `darling-jax classifier train` folder, a HF
      *ForSequenceClassification folder with a 2-way head, or "default" (the project's default
      classifier, trained on first use).
    threshold: novelty equivalence threshold (pairs with p > threshold are equivalent); None: the
      classifier's calibrated threshold, 0.5 for "exact".
    answer_max_words / answer_max_tokens: the classifier's per-answer cut (None: its folder's;
      default (max_length - 3) // 2 words; NoveltyBench's DeBERTa: 128 tokens).
    symmetric: classifier: average both orders of each pair.
    patience: novelty utility patience p (NoveltyBench: 0.8; 1.0 weighs every position equally).
    maj: compute maj@k for math.
    save_completions: keep every completion in results.jsonl (N per problem: large at N = 256).
    skip_malformed: skip (and count) malformed dataset records instead of failing.
  """

  model: str
  dataset: str
  split: str | None = None
  num_samples: int | None = None
  max_new_tokens: int = 1024
  temperature: float | None = None
  top_p: float | None = None
  seed: int = 0
  batch_size: int = 8
  limit: int | None = None
  max_prompt_tokens: int = 1024
  output_dir: str = "eval_out"
  data_dir: str | None = None
  cache_dir: str | None = None
  dtype: str = "float32"
  prompt_field: str | None = None
  answer_field: str | None = None
  extra_fields: tuple[str, ...] = ()
  quality: str | None = None
  equivalence: Equivalence | str = Equivalence.EXACT
  classifier: str | None = None
  threshold: float | None = None
  answer_max_words: int | None = None  # classifier input per answer (diversity/answer_length.py)
  answer_max_tokens: int | None = None
  symmetric: bool = False  # classifier: average both orders of each pair (default: i < j once)
  patience: float = 0.8
  maj: bool = True
  save_completions: bool = True
  skip_malformed: bool = False

  def __post_init__(self):
    for name in ("max_new_tokens", "batch_size", "max_prompt_tokens"):
      if getattr(self, name) < 1:
        raise InputError(f"EvalConfig.{name}", f"must be >= 1, got {getattr(self, name)}")
    for name in ("num_samples", "limit"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise InputError(f"EvalConfig.{name}", f"must be >= 1, got {value}")
    try:
      object.__setattr__(self, "equivalence", Equivalence(self.equivalence))
    except ValueError:
      raise InputError("EvalConfig.equivalence", f"unknown scorer {self.equivalence!r}; known: "
                                                 f"{[e.value for e in Equivalence]}") from None

  def dataset_spec(self) -> DatasetSpec:
    if self.dataset.endswith(".jsonl") or pathlib.Path(self.dataset).is_file():
      if self.prompt_field is None:
        raise InputError("--prompt-field", f"needed to read the jsonl file {self.dataset}")
      mapping = FieldMapping.from_spec(self.prompt_field, self.answer_field,
                                       extra=self.extra_fields)
      return custom_dataset(self.dataset, mapping, split="test", quality=self.quality)
    return get_dataset(self.dataset)


def _prompt_text(prompt: str | Sequence[Any]) -> str:
  """A row's prompt as one string for quality functions and result files."""
  if isinstance(prompt, str):
    return prompt
  return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _default_generate() -> GenerateFn:
  from darling_jax.sampling import generate_texts

  return generate_texts


def run_eval(config: EvalConfig, *, generate: GenerateFn | None = None, model: Any = None,
             tokenizer: Any = None) -> dict[str, Any]:
  """Runs one evaluation and writes its files; returns the summary dict.

  Args:
    config: what to evaluate.
    generate: sampler with `generate_texts`' signature (default: darling_jax.sampling's).
    model, tokenizer: an already loaded pair (default: `load_model(config.model)`).
  """
  from darling_jax.data.builders import load_split
  from darling_jax.data.pipeline import prepare_prompts

  spec = config.dataset_spec()
  split = config.split or ("test" if "test" in spec.files else spec.splits[0])
  source = load_split(spec, split, data_dir=config.data_dir, cache_dir=config.cache_dir,
                      skip_malformed=config.skip_malformed or None)
  rows: list[Row] = source[: config.limit] if config.limit else list(source)
  defaults = TASK_DEFAULTS[spec.task]
  num_samples = config.num_samples or defaults["num_samples"]
  temperature = defaults["temperature"] if config.temperature is None else config.temperature
  top_p = defaults["top_p"] if config.top_p is None else config.top_p

  # The classifier first: a bad folder, threshold or answer length fails before any sampling.
  scorer = (_novelty_scorer(config) if spec.task is Task.OPEN_ENDED
            and config.equivalence is Equivalence.CLASSIFIER else None)
  if model is None or tokenizer is None:
    from darling_jax.models.loading import load_model

    model, tokenizer = load_model(config.model, dtype=config.dtype)
  examples, stats = prepare_prompts(rows, tokenizer, config.max_prompt_tokens, spec.template)
  generate = generate or _default_generate()
  start = time.perf_counter()
  completions = generate(model, tokenizer, [ex.text for ex in examples], num_samples=num_samples,
                         max_new_tokens=config.max_new_tokens, temperature=temperature,
                         top_p=top_p, seed=config.seed, batch_size=config.batch_size)
  gen_seconds = time.perf_counter() - start
  lengths = [[len(tokenizer.encode(text)) for text in group] for group in completions]
  num_tokens = sum(map(sum, lengths))

  prompts = [_prompt_text(ex.row.prompt) for ex in examples]
  columns = {name: [ex.row.extra.get(name) for ex in examples] for name in
             (examples[0].row.extra if examples else {})}
  out_dir = pathlib.Path(config.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  match spec.task:
    case Task.MATH:
      records, summary = _math(config, spec, examples, prompts, columns, completions, lengths,
                               out_dir)
    case Task.OPEN_ENDED:
      records, summary = _novelty(config, examples, prompts, columns, completions, scorer)
  for record, ex, prompt in zip(records, examples, prompts):
    record.update(source=ex.row.source, prompt=prompt, extra=dict(ex.row.extra))
  summary.update(
      model=str(config.model), dataset=spec.name, split=split, task=spec.task.value,
      temperature=temperature, top_p=top_p, max_new_tokens=config.max_new_tokens,
      seed=config.seed, prompts_evaluated=len(examples), prompts_dropped=stats.num_dropped,
      max_prompt_tokens=config.max_prompt_tokens, generation_seconds=gen_seconds,
      generated_tokens=num_tokens, tokens_per_second=num_tokens / max(gen_seconds, 1e-9))
  with open(out_dir / "results.jsonl", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
  return summary


def _math(config, spec, examples, prompts, columns, completions, lengths, out_dir):
  from darling_jax.evaluation.math_eval import evaluate_math
  from darling_jax.evaluation.plots import plot_pass_at_k
  from darling_jax.rewards import builtin

  quality_name = config.quality or spec.quality
  if quality_name is None:
    raise InputError(f"dataset {spec.name!r}", "has no quality function; pass --quality NAME")
  quality = builtin(quality_name)
  try:
    result = evaluate_math(completions, [ex.row.answer for ex in examples], prompts=prompts,
                           columns=columns, quality=quality, lengths=lengths, maj=config.maj)
  finally:
    close = getattr(quality, "close", None)
    if callable(close):
      close()
  if config.save_completions:
    for record, group in zip(result.per_problem, completions):
      record["completions"] = list(group)
  curves = {"pass@k": result.summary["pass@k"]}
  if config.maj:
    curves["maj@k"] = result.summary["maj@k"]
  plot_pass_at_k(curves, out_dir / "pass_at_k.png",
                 title=f"{spec.name}: {pathlib.Path(config.model).name}", ylabel="score")
  summary = dict(result.summary, quality=quality_name)
  return result.per_problem, summary


def _novelty_scorer(config):
  if not config.classifier:
    raise InputError("--classifier", "the classifier equivalence needs a classifier folder "
                     "(or 'default')")
  from darling_jax.diversity.pair_scoring import load_scorer
  from darling_jax.train.components import resolve_classifier

  return load_scorer(resolve_classifier(config.classifier), threshold=config.threshold,
                     symmetric=config.symmetric or None, answer_max_words=config.answer_max_words,
                     answer_max_tokens=config.answer_max_tokens, length_source="--")


def _novelty(config, examples, prompts, columns, completions, scorer=None):
  from darling_jax.evaluation.novelty import evaluate_novelty, exact_match_equivalence
  from darling_jax.rewards import builtin

  threshold = config.threshold
  match config.equivalence:
    case Equivalence.EXACT:
      equivalence = exact_match_equivalence
      threshold = 0.5 if threshold is None else threshold
    case Equivalence.CLASSIFIER:
      scorer = scorer or _novelty_scorer(config)
      equivalence = lambda _prompts, gens: scorer(gens)  # noqa: E731
      threshold = scorer.threshold
  quality = builtin(config.quality) if config.quality else None
  try:
    result = evaluate_novelty(prompts, completions, equivalence=equivalence,
                              threshold=threshold, quality=quality, columns=columns,
                              patience=config.patience)
  finally:
    close = getattr(quality, "close", None)
    if callable(close):
      close()
  for record, group in zip(result.per_prompt, completions):
    record["generations"] = list(group)
  return result.per_prompt, dict(result.summary, equivalence=config.equivalence.value)
