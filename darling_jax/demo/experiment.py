"""DARLING vs quality-only GRPO on the demo task: same starting policy, seeds and budget.

  runs/demo/{grpo,darling}-seed{k}/   metrics.jsonl, eval.jsonl, eval_samples.jsonl, TensorBoard
                                      events and checkpoints of each run
  runs/demo/report.md + *.png          the comparison (demo/report.py)

Both methods use the identical config except the fusion (q for GRPO, q * div for DARLING); the
learned classifier scores every run's diversity, also the GRPO runs' (measured, not rewarded).
Rerunning resumes finished/unfinished runs from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

from darling_jax.demo.assets import cache_dir, default_classifier, demo_policy, demo_prompts
from darling_jax.demo.config import demo_config
from darling_jax.train.overrides import apply_overrides

METHODS: dict[str, tuple[str, ...]] = {
    "grpo": ("update.reward.fusion.mode=quality_only",),  # quality-only GRPO (Dr.GRPO advantage)
    "darling": (),  # q * div with the learned classifier (the paper's method)
}


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  seeds: tuple[int, ...] = (0, 1, 2)
  steps: int = 30
  out: str = "runs/demo"
  overrides: tuple[str, ...] = ()  # applied to both methods (e.g. "optim.learning_rate=1e-3")


def _log(msg: str) -> None:
  print(f"[darling-jax demo] {msg}", file=sys.stderr, flush=True)


def enable_compilation_cache() -> None:
  """XLA's persistent cache: the six runs (and later demos) compile each program once."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_config(method: str, seed: int, settings: DemoSettings):
  workdir = pathlib.Path(settings.out) / f"{method}-seed{seed}"
  return apply_overrides(demo_config(), [f"seed={seed}", f"steps={settings.steps}",
                                         f"workdir={workdir}", *METHODS[method],
                                         *settings.overrides])


def run_demo(settings: DemoSettings = DemoSettings(), progress: bool = True) -> pathlib.Path:
  """Prepares the cached assets, runs every (method, seed), writes the report; returns its path."""
  from darling_jax.demo.report import write_report
  from darling_jax.train.loop import train

  enable_compilation_cache()
  t0 = time.perf_counter()
  demo_policy()
  demo_prompts()
  if not any("diversity.source" in o for o in settings.overrides):
    default_classifier()
  prep_s = time.perf_counter() - t0
  _log(f"assets ready in {prep_s:.0f} s (cached under {cache_dir()})")
  timings = {}
  for seed in settings.seeds:
    for method in METHODS:
      start = time.perf_counter()
      _log(f"{method} seed {seed}: {settings.steps} steps")
      train(run_config(method, seed, settings), progress=progress)
      timings[f"{method}-seed{seed}"] = time.perf_counter() - start
  return write_report(pathlib.Path(settings.out), settings, {"prep_s": prep_s, "runs_s": timings,
                                                            "total_s": time.perf_counter() - t0})
