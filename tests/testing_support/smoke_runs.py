"""`darling-jax train` on configs/smoke.py as a subprocess, and its logged metrics without timings."""

import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMING = ("step_s", "tokens_per_s")


def smoke_cmd(workdir, *extra) -> list[str]:
  """4 steps, a checkpoint every step, n-gram diversity; `extra` overrides come last."""
  return [sys.executable, "-m", "darling_jax", "train", "--config", str(REPO / "configs/smoke.py"),
          "--no-progress", f"workdir={workdir}", "steps=4", "checkpoint_every=1",
          "diversity.source=ngram", *extra]


def one_device_env() -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["XLA_FLAGS"] = ""  # one device, as a user's run
  return env


def logged_metrics(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl rows without wall-clock fields (they differ between identical runs)."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time_")}
          for r in rows]
