"""The optimizer: AdamW with grad-norm clipping and a learning-rate schedule (optax)."""

from __future__ import annotations

import dataclasses
import enum
import math

import optax

from darling_jax.errors import InputError, parse_enum


class Schedule(enum.Enum):
  CONSTANT = "constant"  # the paper: lr 1e-6 constant
  WARMUP_CONSTANT = "warmup_constant"
  WARMUP_COSINE = "warmup_cosine"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW settings; defaults are the paper's (darling.md section 1.7)."""

  learning_rate: float = 1e-6  # peak lr
  weight_decay: float = 0.01  # decoupled (AdamW) weight decay
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  max_grad_norm: float = 1.0  # global-norm clip before the Adam moments; 0 disables it
  schedule: Schedule = Schedule.CONSTANT
  warmup_steps: int = 0  # optimizer updates (mini-batches), not training steps
  decay_steps: int = 0  # cosine horizon in optimizer updates (WARMUP_COSINE only)
  end_lr_fraction: float = 0.1  # cosine ends at this fraction of the peak lr

  def __post_init__(self):
    for name in ("b1", "b2"):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
        raise InputError(f"optim.{name}", f"must be in [0, 1) (an exponential decay rate), got "
                         f"{v!r}")
    object.__setattr__(self, "schedule", parse_enum(Schedule, self.schedule, "optim.schedule"))
    for name in ("learning_rate", "weight_decay", "eps", "max_grad_norm", "end_lr_fraction"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InputError(f"optim.{name}", f"must be a finite number >= 0, got {v!r}")
    if self.schedule is Schedule.WARMUP_COSINE and self.decay_steps <= self.warmup_steps:
      raise InputError("optim.decay_steps", f"must exceed warmup_steps={self.warmup_steps} for "
                       f"warmup_cosine, got {self.decay_steps}")

  def lr_schedule(self) -> optax.Schedule:
    lr = self.learning_rate
    match self.schedule:
      case Schedule.CONSTANT:
        return optax.constant_schedule(lr)
      case Schedule.WARMUP_CONSTANT:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(self.warmup_steps, 1)),
             optax.constant_schedule(lr)], [self.warmup_steps])
      case Schedule.WARMUP_COSINE:
        return optax.warmup_cosine_decay_schedule(0.0, lr, self.warmup_steps, self.decay_steps,
                                                  lr * self.end_lr_fraction)

  def build(self) -> optax.GradientTransformation:
    parts = []
    if self.max_grad_norm > 0:
      parts.append(optax.clip_by_global_norm(self.max_grad_norm))
    parts.append(optax.adamw(self.lr_schedule(), b1=self.b1, b2=self.b2, eps=self.eps,
                             weight_decay=self.weight_decay))
    return optax.chain(*parts)
