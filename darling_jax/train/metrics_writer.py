"""Per-step metrics to metrics.jsonl, TensorBoard event files and a progress display (a bar in a
terminal or notebook, plain lines otherwise).

Only process 0 writes. On resume the JSONL is cut back to the restored step and TensorBoard purges
events after it, so a restarted run's logs read exactly like an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Any, Mapping

import jax

# shown on the progress bar, in this order, when present
_BAR_KEYS = ("quality", "diversity", "classes_per_group", "reward", "kl", "entropy", "step_s")


class MetricsWriter:
  def __init__(self, workdir: str | pathlib.Path, total_steps: int, start_step: int = 0,
               log_every: int = 1, progress: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.log_every = max(1, log_every)
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._truncate(start_step)
    self._file = open(self.path, "a", encoding="utf-8")
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=start_step or None)
    self._plain = False
    self._total = total_steps
    if progress:
      # A terminal gets a bar, a notebook (Colab, Jupyter: no TTY) its widget bar, and a run with
      # neither (SLURM, nohup on a TPU VM, CI) one plain line per log_every steps.
      if sys.stderr.isatty() or _in_notebook():
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, desc="darling", unit="step",
                         file=sys.stderr, dynamic_ncols=True)
      else:
        self._plain = True

  def _truncate(self, start_step: int) -> None:
    """Drops lines the resumed run will write again: training steps >= start_step, and evaluations
    after the restored checkpoint (all of them on a fresh start, which may evaluate step 0)."""
    keep_eval = (lambda s: start_step > 0 and s <= start_step)
    for path, keep in ((self.path, lambda s: s < start_step),
                       (self.path.parent / "eval.jsonl", keep_eval),
                       (self.path.parent / "eval_samples.jsonl", keep_eval)):
      if not path.exists():
        continue
      kept = []
      for line in path.read_text().splitlines():
        try:
          if keep(json.loads(line).get("step", 0)):
            kept.append(line)
        except json.JSONDecodeError:
          break  # a torn last line from a killed run
      path.write_text("".join(k + "\n" for k in kept))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: _jsonable(v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
    self._file.flush()
    if step % self.log_every == 0:
      for k, v in clean.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    shown = {k: f"{clean[k]:.3g}" for k in _BAR_KEYS
             if isinstance(clean.get(k), (int, float))}
    if self._bar is not None:
      self._bar.update(1)
      self._bar.set_postfix(shown)
    elif self._plain and (step % self.log_every == 0 or step + 1 == self._total):
      fields = " ".join(f"{k}={v}" for k, v in shown.items())
      print(f"darling step {step + 1}/{self._total} {fields}", file=sys.stderr, flush=True)

  def write_eval(self, step: int, prefix: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path.parent / "eval.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}) + "\n")
    for k, v in metrics.items():
      v = _jsonable(v)
      if isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(f"{prefix}/{k}", v, step)

  def write_samples(self, step: int, prompts, samples) -> None:
    if not self.enabled:
      return
    with open(self.path.parent / "eval_samples.jsonl", "a", encoding="utf-8") as f:
      for prompt, group in zip(prompts, samples):
        f.write(json.dumps({"step": step, "prompt": prompt, "samples": list(group)}) + "\n")

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    self._tb.close()
    if self._bar is not None:
      self._bar.close()


def _in_notebook() -> bool:
  """True inside a Jupyter/Colab kernel, where stderr is no TTY but a widget bar renders."""
  ipython = sys.modules.get("IPython")
  shell = ipython.get_ipython() if ipython is not None else None
  return shell is not None and hasattr(shell, "kernel")


def _jsonable(v: Any) -> Any:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf; keep the fact visible
  return v
