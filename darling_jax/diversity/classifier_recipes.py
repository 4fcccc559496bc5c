"""Named training recipes for the equivalence classifier (frozen dataclasses, literal numbers).

  "default"  bi-encoder, frozen MiniLM, only the similarity-feature head (a 4-feature logistic
             regression) trains, on features computed once: one 128-token encoder pass per answer
             (1,600 training answers, ~200k tokens, ~4 TFLOP) plus seconds of head training.
             Measured on the 2-core CPU: 3.5 min wall (3.7 min CPU time) at load ~3, 8.3 min
             when other jobs loaded it to ~6. The classifier it produces is the cheap one to run inside RL on CPU (G encoder
             passes per group). windows=2 (256 tokens per answer) doubles the cost for no gain on
             our validation split.
  "zeroshot" the baseline: cosine of MiniLM mean-pooled embeddings (256 tokens, as
             sentence-transformers uses it), nothing trained; `classifier eval` tunes tau.
  "full"     the paper's recipe (NoveltyBench / DARLING): cross-encoder, every weight trained, 128
             tokens per answer, 2-way CE with inverse-frequency class weights, swapped-order
             augmentation, AdamW 10 warm-up steps to 2e-5 then cosine to 2e-6 over 80 steps at
             effective batch 64. For accelerators: 5,120 rows of up to 259 tokens forward +
             backward, ~3 x 2 x (non-embedding params) x tokens FLOPs (MiniLM: ~1e14 FLOPs;
             ModernBERT-base ~1e15). Measured on the 2-core CPU: 63 s/step, ~85 min in all.
  "bi_full"  bi-encoder with every weight trained (siamese fine-tune), for accelerators.
"""

from __future__ import annotations

import dataclasses
import enum

from darling_jax.diversity.classifier import PairMode
from darling_jax.errors import InputError


class Trainable(enum.Enum):
  HEAD = "head"  # frozen encoder: embeddings computed once; only the bi-mode head trains
  ALL = "all"  # every weight trains (encoder + head)
  NONE = "none"  # zero-shot: p = sigmoid(10 (cos(m_i, m_j) - 0.5)), the embedding-cosine baseline


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One way of training the classifier; every field is a literal in RECIPES."""

  name: str
  mode: PairMode
  trainable: Trainable
  max_tokens: int  # per-answer truncation (tokens) for training and for later scoring
  windows: int  # bi mode: embed up to this many consecutive max_tokens windows per answer, averaged
  bag_tokens: int  # bi mode: tokens per answer in the lexical bag-of-words features
  steps: int  # optimizer steps
  batch_size: int  # pairs per step (after swap augmentation); 0 = the whole training set
  warmup_steps: int  # linear warm-up from 0 to peak_lr
  peak_lr: float
  final_lr: float  # cosine decay from peak_lr to final_lr at `steps`
  weight_decay: float  # AdamW decoupled weight decay
  head_hidden: int  # bi mode: hidden width of the pair-feature MLP (0 = linear)
  val_fraction: float  # stratified share of the pairs file held out for validation
  threshold_folds: int  # >1: pick tau by k-fold out-of-fold predictions on the training split
  threshold: float  # tau used when threshold_folds <= 1
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.mode, PairMode):
      raise InputError(f"recipe {self.name}.mode", f"must be a PairMode, got {self.mode!r}")
    if not isinstance(self.trainable, Trainable):
      raise InputError(f"recipe {self.name}.trainable", f"must be a Trainable, got "
                       f"{self.trainable!r}")
    if self.trainable != Trainable.ALL and self.mode != PairMode.BI:
      raise InputError(f"recipe {self.name}", "a frozen encoder (trainable=head/none) needs bi "
                       "mode: a cross-encoder's head reads features the frozen encoder never "
                       "learned")
    if self.windows < 1 or (self.windows > 1 and self.mode != PairMode.BI):
      raise InputError(f"recipe {self.name}.windows", f"must be 1 in cross mode and >= 1 in bi "
                       f"mode, got {self.windows}")
    if not 0.0 < self.val_fraction < 1.0:
      raise InputError(f"recipe {self.name}.val_fraction", f"must be in (0, 1), got "
                       f"{self.val_fraction}")
    if self.steps < 1 or self.warmup_steps > self.steps:
      raise InputError(f"recipe {self.name}.steps", f"need 1 <= warmup_steps ({self.warmup_steps})"
                       f" <= steps ({self.steps})")

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "mode": self.mode.value,
            "trainable": self.trainable.value}


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        name="default", mode=PairMode.BI, trainable=Trainable.HEAD, max_tokens=128, windows=1,
        bag_tokens=512, steps=500, batch_size=0, warmup_steps=10, peak_lr=3e-2, final_lr=3e-3,
        weight_decay=0.0, head_hidden=0, val_fraction=0.2, threshold_folds=5, threshold=0.5),
    "zeroshot": Recipe(
        name="zeroshot", mode=PairMode.BI, trainable=Trainable.NONE, max_tokens=254, windows=1,
        bag_tokens=0, steps=1, batch_size=0, warmup_steps=0, peak_lr=0.0, final_lr=0.0,
        weight_decay=0.0, head_hidden=0, val_fraction=0.2, threshold_folds=0, threshold=0.5),
    "full": Recipe(
        name="full", mode=PairMode.CROSS, trainable=Trainable.ALL, max_tokens=128, windows=1,
        bag_tokens=0, steps=80, batch_size=64, warmup_steps=10, peak_lr=2e-5, final_lr=2e-6,
        weight_decay=0.01, head_hidden=0, val_fraction=0.2, threshold_folds=0, threshold=0.5),
    "bi_full": Recipe(
        name="bi_full", mode=PairMode.BI, trainable=Trainable.ALL, max_tokens=128, windows=2,
        bag_tokens=512, steps=80, batch_size=64, warmup_steps=10, peak_lr=2e-5, final_lr=2e-6,
        weight_decay=0.01, head_hidden=0, val_fraction=0.2, threshold_folds=0, threshold=0.5),
}


def get_recipe(name: str) -> Recipe:
  if name not in RECIPES:
    raise InputError("--recipe", f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
  return RECIPES[name]
