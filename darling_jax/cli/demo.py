"""`darling-jax demo`: DARLING vs quality-only GRPO on the demo task, with a report."""

from __future__ import annotations

import argparse
import sys


def register(subparsers, verb: str) -> None:
  p = subparsers.add_parser(
      verb, help="run the DARLING vs GRPO demo (make demo) and write runs/demo/report.md",
      description="Prepares the cached demo policy and classifier (first run only), trains "
      "GRPO and DARLING from the same policy for each seed and writes runs/demo/report.md.")
  p.add_argument("--out", default="runs/demo")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("overrides", nargs="*", help="key=value overrides for both methods")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  from darling_jax.demo.experiment import DemoSettings, run_demo

  settings = DemoSettings(seeds=tuple(int(s) for s in args.seeds.split(",") if s.strip()),
                          steps=args.steps, out=args.out, overrides=tuple(args.overrides))
  path = run_demo(settings, progress=not args.no_progress)
  print(f"darling-jax demo: report written to {path}", file=sys.stderr)
  return 0
