"""Dataset names -> local files, field mapping, prompt template and the quality function that fits.

Every entry is built from the local data folder (`local_data.resolve_data_dir`); `custom_dataset`
makes the same kind of entry for a user's own jsonl file (DeepScaleR, WildChat 10k, ...).

Prompt templates. Math sets use one fixed instruction, appended to the problem as the user turn:

    "{problem} Let's think step by step and output the final answer within \\boxed{}."

the instruction of the DeepScaleR prompt set (agentica-project/deepscaler's data preprocessing, also
verl's math recipes) that DARLING's math runs train on; its `\\boxed{}` is what the `math_verify`
quality function reads (the paper's math reward uses the boxed answer only). Open-ended sets
(NoveltyBench, MT-Bench, Self-Instruct) use the prompt as it is. No system prompt is added: the
tokenizer's chat template supplies its default one, if any.

| name                  | splits       | answer                     | quality       | task       |
|-----------------------|--------------|----------------------------|---------------|------------|
| gsm8k                 | train, test  | worked solution "#### 72"  | gsm8k         | math       |
| math500               | test         | LaTeX answer               | math_verify   | math       |
| math_train            | train        | LaTeX answer (4 skipped)   | math_verify   | math       |
| aime24, aime25, amc23 | test         | integer answer             | math_verify   | math       |
| noveltybench_curated  | test         | -                          | -             | open_ended |
| noveltybench_wildchat | test         | -                          | -             | open_ended |
| mt_bench              | test         | - (first turn only)        | -             | open_ended |
| self_instruct         | test         | - (instruction + input)    | -             | open_ended |
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
from typing import Mapping

from darling_jax.data.rows import FieldMapping, Prompt
from darling_jax.errors import InputError

MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


class Task(enum.Enum):
  """What a dataset is evaluated with."""

  MATH = "math"  # verifiable answers: pass@k / maj@k
  OPEN_ENDED = "open_ended"  # no answer: NoveltyBench distinct / utility


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """Turns a row's prompt into chat messages.

  Attributes:
    user: the user turn, with "{prompt}" where the row's prompt goes (plain replacement, so LaTeX
      braces in the template need no escaping). For a chat-message prompt it rewrites the content of
      the last user message.
    system: an optional system message, prepended unless the prompt already has one.
  """

  user: str = "{prompt}"
  system: str | None = None

  def __post_init__(self):
    if "{prompt}" not in self.user:
      raise InputError("PromptTemplate.user", f"must contain '{{prompt}}', got {self.user!r}")

  def messages(self, prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
      messages = [{"role": "user", "content": self.user.replace("{prompt}", prompt)}]
    else:
      messages = [dict(m) for m in prompt]
      last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
      if last_user is not None:
        content = messages[last_user]["content"]
        messages[last_user]["content"] = self.user.replace("{prompt}", content)
    if self.system is not None and messages[0]["role"] != "system":
      messages.insert(0, {"role": "system", "content": self.system})
    return messages

  def plain_text(self, prompt: Prompt) -> str:
    """The prompt as plain text, for tokenizers without a chat template."""
    return "\n\n".join(m["content"] for m in self.messages(prompt))


PLAIN_TEMPLATE = PromptTemplate()
MATH_TEMPLATE = PromptTemplate(user="{prompt} " + MATH_INSTRUCTION)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One named dataset.

  Attributes:
    name: registry name (also the TFDS config name's prefix).
    files: split -> jsonl path, relative to the data folder (or absolute, for custom datasets).
    mapping: how a record becomes a Row.
    task: which evaluation fits.
    quality: name of the `darling_jax.rewards.BUILTINS` quality function that scores it, or None.
    template: how prompts are phrased.
    description: one line for `--help` and logs.
    skip_malformed: the default of `load_split(skip_malformed=None)`: True only where the upstream
      file is known to hold a few unusable records (they are still counted and logged).
  """

  name: str
  files: Mapping[str, str]
  mapping: FieldMapping
  task: Task
  quality: str | None = None
  template: PromptTemplate = PLAIN_TEMPLATE
  description: str = ""
  skip_malformed: bool = False

  def __post_init__(self):
    if not self.files:
      raise InputError(f"dataset {self.name!r}", "has no files")
    if not isinstance(self.task, Task):
      raise InputError(f"dataset {self.name!r}", f"task must be a Task, got {self.task!r}")

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.files)

  def file(self, split: str, data_dir: pathlib.Path | None) -> pathlib.Path:
    """The jsonl path of a split; relative paths resolve against `data_dir`."""
    if split not in self.files:
      raise InputError(f"dataset {self.name!r}",
                       f"has no split {split!r}; splits: {list(self.files)}")
    path = pathlib.Path(self.files[split])
    if not path.is_absolute():
      if data_dir is None:
        raise InputError(f"dataset {self.name!r}", "needs a data folder for its relative paths")
      path = data_dir / path
    return path


def _math(name: str, files: dict[str, str], prompt: str, extra: tuple[str, ...], quality: str,
          description: str, skip_malformed: bool = False) -> DatasetSpec:
  return DatasetSpec(
      name=name, files=files, task=Task.MATH, quality=quality, template=MATH_TEMPLATE,
      mapping=FieldMapping(prompt=prompt, answer="answer", extra=tuple((e, e) for e in extra)),
      description=description, skip_malformed=skip_malformed)


def _open(name: str, files: dict[str, str], mapping: FieldMapping, description: str) -> DatasetSpec:
  return DatasetSpec(name=name, files=files, mapping=mapping, task=Task.OPEN_ENDED,
                     description=description)


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in [
    _math("gsm8k", {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}, "question", (),
          "gsm8k", "GSM8K grade-school math (7,473 train / 1,319 test)"),
    _math("math500", {"test": "math500/test.jsonl"}, "problem", ("difficulty", "unique_id"),
          "math_verify", "MATH-500 test subset (500)"),
    # 4 upstream records have a null or empty answer (lines 887, 1010, 5329, 5331): skipped and
    # reported, leaving 7,470 rows.
    _math("math_train", {"train": "math_train/train.jsonl"}, "problem", ("difficulty", "type"),
          "math_verify", "Hendrycks MATH train split (7,470 with answers)", skip_malformed=True),
    _math("aime24", {"test": "competition_math/aime24.jsonl"}, "problem", ("id",),
          "math_verify", "AIME 2024 (30)"),
    _math("aime25", {"test": "competition_math/aime25.jsonl"}, "question", ("id",),
          "math_verify", "AIME 2025 (30)"),
    _math("amc23", {"test": "competition_math/amc23.jsonl"}, "problem", ("id",),
          "math_verify", "AMC 2023 (40)"),
    _open("noveltybench_curated", {"test": "noveltybench/curated.jsonl"},
          FieldMapping(prompt="prompt", extra=(("id", "id"), ("category", "category"))),
          "NoveltyBench curated prompts (100)"),
    _open("noveltybench_wildchat", {"test": "noveltybench/wildchat-1k.jsonl"},
          FieldMapping(prompt="prompt", extra=(("id", "id"),)),
          "NoveltyBench WildChat-1k prompts (1,000)"),
    _open("mt_bench", {"test": "mt_bench/question.jsonl"},
          FieldMapping(prompt="turns.0", extra=(("question_id", "question_id"),
                                                ("category", "category"))),
          "MT-Bench questions, first turn (80)"),
    _open("self_instruct", {"test": "self_instruct_user_oriented/user_oriented_instructions.jsonl"},
          FieldMapping(prompt="instruction", context="instances.0.input",
                       extra=(("id", "id"), ("reference", "instances.0.output"))),
          "Self-Instruct user-oriented instructions (252)"),
]}


def dataset_names() -> list[str]:
  return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
  """The registered dataset called `name`; InputError listing the known names otherwise."""
  if name not in DATASETS:
    raise InputError("dataset", f"unknown dataset {name!r}; known: {', '.join(dataset_names())} "
                                f"(or a .jsonl file with a field mapping)")
  return DATASETS[name]


def custom_dataset(path: str | os.PathLike, mapping: FieldMapping, *, name: str | None = None,
                   split: str = "train", task: Task | None = None, quality: str | None = None,
                   template: PromptTemplate | None = None) -> DatasetSpec:
  """A dataset entry for a user's own jsonl file (one split).

  Args:
    path: the jsonl file.
    mapping: its fields (e.g. `FieldMapping(prompt="problem", answer="answer")` for DeepScaleR).
    name: registry-style name for logs and the cache; default: the file's stem.
    split: the split name the file is exposed as.
    task: default MATH when the mapping has an answer, else OPEN_ENDED.
    quality: quality function name; default "math_verify" for MATH, None otherwise.
    template: default MATH_TEMPLATE for MATH, PLAIN_TEMPLATE otherwise.
  """
  path = pathlib.Path(path).expanduser().resolve()
  if not path.is_file():
    raise InputError(path, "dataset file does not exist")
  if task is None:
    task = Task.MATH if mapping.answer is not None else Task.OPEN_ENDED
  is_math = task == Task.MATH
  if quality is None and is_math:
    quality = "math_verify"
  if template is None:
    template = MATH_TEMPLATE if is_math else PLAIN_TEMPLATE
  return DatasetSpec(name=name or path.stem, files={split: str(path)}, mapping=mapping, task=task,
                     quality=quality, template=template, description=f"custom jsonl {path}")
