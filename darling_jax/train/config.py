"""The typed configuration of a DARLING training run.

Config files in configs/ define `get_config() -> TrainConfig`; the command line overrides any field
with dotted `key=value` pairs (overrides.py). Every section validates itself in `__post_init__`, and
`TrainConfig` checks what spans sections (batch divisibility, KL needs a reference, ...).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import pathlib

from darling_jax.errors import InputError, parse_enum
from darling_jax.models.attention import check_impl
from darling_jax.rl.optimizer import OptimConfig
from darling_jax.rl.update import UpdateConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sharding.mesh import MeshConfig

_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """The policy to post-train (and, when beta > 0, its frozen copy as the KL reference)."""

  path: str = ""  # HF folder or .gguf; "smollm2" = the packaged SmolLM2-135M-Instruct GGUF
  init_preset: str = ""  # when path is "": random init of this DecoderConfig preset ("tiny", ...)
  tokenizer: str = ""  # tokenizer source for init_preset (HF folder, .gguf or "smollm2")
  param_dtype: str = "float32"  # master weights and optimizer moments
  dtype: str = "float32"  # activations; bfloat16 halves activation memory on accelerators
  remat: bool = False  # recompute each layer in the backward pass (long responses)
  # full-sequence attention backend (models/attention.py): auto = splash on TPU, cudnn on GPU,
  # blockwise flash on CPU past 512 x 512 tokens; einsum/blockwise/splash/cudnn force one
  attention: str = "auto"
  architecture: str = ""  # DecoderConfig preset of the checkpoint (lets `plan` work without it)

  def __post_init__(self):
    if not self.path and not self.init_preset:
      raise InputError("policy", "set policy.path (a checkpoint) or policy.init_preset")
    if self.init_preset and not self.tokenizer:
      raise InputError("policy.tokenizer", "a random init (init_preset) needs a tokenizer source")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise InputError(f"policy.{name}", f"must be one of {_DTYPES}, got {getattr(self, name)!r}")
    check_impl(self.attention, "policy.attention")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where prompts come from and how many per step."""

  dataset: str = "gsm8k"  # registry name (darling_jax.data.dataset_names()) or a .jsonl path
  split: str = "train"
  prompt_field: str = "prompt"  # for a .jsonl dataset: the field holding the prompt
  answer_field: str = ""  # for a .jsonl dataset: gold answer field (math verification)
  prompt_template: str = ""  # "plain" (as is), "math" (+ the boxed-answer instruction), or ""
                             # for the dataset's own (a .jsonl with an answer field: math)
  data_dir: str = ""  # local folder with the datasets; "" = DARLING_DATA_DIR or ../shared/data
  batch_size: int = 8  # B: prompts per step, global (divided across hosts)
  max_prompt_tokens: int = 256  # longer prompts are dropped and counted
  eval_dataset: str = ""  # held-out prompts: registry name or .jsonl ("" = same as dataset)
  eval_split: str = ""  # held-out split for periodic evaluation ("" = none)

  def __post_init__(self):
    if self.batch_size < 1:
      raise InputError("data.batch_size", f"must be >= 1, got {self.batch_size}")
    if self.max_prompt_tokens < 1:
      raise InputError("data.max_prompt_tokens", f"must be >= 1, got {self.max_prompt_tokens}")
    if self.prompt_template not in ("", "plain", "math"):
      raise InputError("data.prompt_template", f"must be plain, math or empty, got "
                       f"{self.prompt_template!r}")


class DiversitySource(enum.Enum):
  CLASSIFIER = "classifier"  # the learned pair classifier (DARLING)
  NGRAM = "ngram"  # lexical 4-gram uniqueness (the paper's ablation)
  NONE = "none"  # no diversity: only valid with quality-only fusion (GRPO)


@dataclasses.dataclass(frozen=True)
class DiversityConfig:
  source: DiversitySource = DiversitySource.CLASSIFIER
  classifier: str = ""  # a `darling-jax classifier train` output or HF *ForSequenceClassification
  symmetric: bool = False  # cross-encoder: average both pair orders (False: i < j once, as the ref)
  # Per-answer classifier input, replacing the folder's cut (diversity/answer_length.py); both
  # None: the folder's (default: (max_length - 3) // 2 whitespace words per answer).
  answer_max_words: int | None = None
  answer_max_tokens: int | None = None
  measure_when_unused: bool = True  # GRPO runs still log classifier diversity (costs its time)
  ngram: int = 4
  classifier_params: int = 0  # for `plan` when the classifier folder is not on this machine

  def __post_init__(self):
    object.__setattr__(self, "source", parse_enum(DiversitySource, self.source, "diversity.source"))
    if self.answer_max_words is not None and self.answer_max_tokens is not None:
      raise InputError("diversity.answer_max_words", "set answer_max_words or answer_max_tokens, "
                       "not both")
    for name in ("answer_max_words", "answer_max_tokens"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise InputError(f"diversity.{name}", f"must be a positive integer or None, got {v!r}")
    if self.source is DiversitySource.CLASSIFIER and not self.classifier:
      raise InputError("diversity.classifier", "the classifier source needs a trained classifier "
                       "folder (darling-jax classifier train --out DIR)")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  # (builtin name, weight) pairs summed into q; names from darling_jax.rewards.BUILTINS
  functions: tuple[tuple[str, float], ...] = (("gsm8k", 1.0),)
  timeout_s: float = 5.0  # per-answer limit of the math verifier
  # Per-step limit of the verifiers: answers unfinished by then score 0 and are counted
  # (metrics quality_unfinished / quality_timed_out); None: per-answer limits only.
  step_timeout_s: float | None = 60.0
  reward_model: str = ""  # HF *ForSequenceClassification folder for the "reward_model" quality

  def __post_init__(self):
    if not self.functions:
      raise InputError("quality.functions", "needs at least one name:weight")
    if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < float("inf")):
      raise InputError("quality.timeout_s", f"must be a positive number, got {self.timeout_s!r}")
    if self.step_timeout_s is not None and not (
        isinstance(self.step_timeout_s, (int, float)) and 0 < self.step_timeout_s < float("inf")):
      raise InputError("quality.step_timeout_s",
                       f"must be a positive number or none, got {self.step_timeout_s!r}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  every: int = 0  # evaluate every N steps (0: never); also after the last step when > 0
  num_prompts: int = 32  # held-out prompts per evaluation
  num_samples: int = 8  # samples per prompt (pass@k for k = 1, 2, 4, ... <= num_samples)
  temperature: float = 1.0
  top_p: float = 1.0
  at_start: bool = False  # also evaluate the starting policy (step 0)
  save_samples: int = 0  # write this many prompts' samples per evaluation to eval_samples.jsonl

  def __post_init__(self):
    for name in ("num_prompts", "num_samples"):
      if getattr(self, name) < 1:
        raise InputError(f"eval.{name}", f"must be >= 1, got {getattr(self, name)}")
    if self.every < 0 or self.save_samples < 0:
      raise InputError("eval.every" if self.every < 0 else "eval.save_samples", "must be >= 0")
    if not self.temperature > 0 or not 0 < self.top_p <= 1:
      raise InputError("eval.temperature" if not self.temperature > 0 else "eval.top_p",
                       f"must be > 0 (top_p in (0, 1]), got temperature={self.temperature}, "
                       f"top_p={self.top_p}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run. Defaults are the paper's where it states one (darling.md sections 1 and 5)."""

  policy: PolicyConfig = PolicyConfig(path="smollm2")
  data: DataConfig = DataConfig()
  sampler: SamplerConfig = SamplerConfig(max_new_tokens=256, num_samples=8, temperature=1.0)
  quality: QualityConfig = QualityConfig()
  diversity: DiversityConfig = DiversityConfig(source=DiversitySource.NGRAM)
  update: UpdateConfig = UpdateConfig()  # update.temperature is taken from sampler.temperature
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  eval: EvalConfig = EvalConfig()
  steps: int = 100  # training steps (each: B prompts x G rollouts, then mini_batches updates)
  seed: int = 0  # everything random (init, data order, sampling) derives from it
  workdir: str = "runs/default"  # metrics.jsonl, TensorBoard events, checkpoints/
  checkpoint_every: int = 10  # steps; 0 = only at the end and on SIGTERM
  keep_checkpoints: int = 2
  log_every: int = 1  # steps between terminal/TensorBoard logs (metrics.jsonl gets every step)
  max_nonfinite_steps: int = 0  # consecutive non-finite updates tolerated before stopping
  # (start, stop): a jax.profiler trace of steps start .. stop-1 into workdir/profile; () = none
  profile_steps: tuple[int, ...] = ()

  def __post_init__(self):
    if self.steps < 0:
      raise InputError("steps", f"must be >= 0, got {self.steps}")
    if self.profile_steps and not (len(self.profile_steps) == 2
                                   and 0 <= self.profile_steps[0] < self.profile_steps[1]):
      raise InputError("profile_steps", f"must be start,stop with 0 <= start < stop, got "
                       f"{self.profile_steps}")
    if not 0 <= self.seed < 2**32:
      raise InputError("seed", f"must be in [0, 2^32), got {self.seed}")
    if self.sampler.num_samples < 2:
      raise InputError("sampler.num_samples", f"a group needs G >= 2 rollouts (advantages are "
                       f"relative to the group), got {self.sampler.num_samples}")
    self.update.split(self.data.batch_size)  # raises naming the field if it does not divide
    from darling_jax.rl.fusion import Fusion

    if (self.diversity.source is DiversitySource.NONE
        and self.update.reward.fusion.mode is not Fusion.QUALITY_ONLY):
      raise InputError("diversity.source", "none needs update.reward.fusion.mode=quality_only")
    if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
      raise InputError("checkpoint_every", "checkpoint_every >= 0 and keep_checkpoints >= 1")


def load_config_file(path: str | os.PathLike, arg: str | None = None) -> TrainConfig:
  """Runs configs/NAME.py's `get_config(arg)` (a config file is trusted user code)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise InputError(path, "config file not found")
  spec = importlib.util.spec_from_file_location(f"darling_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except InputError:
    raise
  except Exception as e:
    raise InputError(path, f"failed to import ({type(e).__name__}: {e})") from None
  if not hasattr(module, "get_config"):
    raise InputError(path, "defines no get_config()")
  config = module.get_config(arg) if arg is not None else module.get_config()
  if not isinstance(config, TrainConfig):
    raise InputError(path, f"get_config() returned {type(config).__name__}, not TrainConfig")
  return config
