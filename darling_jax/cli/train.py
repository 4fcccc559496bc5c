"""`darling-jax train --config configs/NAME.py [key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers, verb: str) -> None:
  p = subparsers.add_parser(
      verb, help="run (or resume) a DARLING / GRPO training run",
      description="Trains a policy with DARLING. The config file defines get_config(); any field "
      "can be overridden with dotted key=value pairs, e.g. steps=10 sampler.num_samples=4 "
      "update.reward.fusion.mode=quality_only workdir=runs/x. Rerunning the same command resumes "
      "from the last checkpoint in workdir.")
  p.add_argument("--config", required=True, help="a configs/*.py file defining get_config()")
  p.add_argument("--config-arg", default=None, help="passed to get_config(arg)")
  p.add_argument("--no-progress", action="store_true", help="no terminal progress bar")
  p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
  p.add_argument("--allow-config-change", action="store_true",
                 help="resume even though the config changes what the checkpoint means (model, "
                 "G, fusion, data, ...); the change is recorded in config_history.jsonl")
  p.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  import json

  from darling_jax.train.config import load_config_file
  from darling_jax.train.overrides import apply_overrides, to_dict

  config = apply_overrides(load_config_file(args.config, args.config_arg), args.overrides)
  if args.print_config:
    print(json.dumps(to_dict(config), indent=2))
    return 0
  from darling_jax.train.distributed import maybe_initialize

  maybe_initialize()
  import jax

  from darling_jax.train.loop import train

  if jax.process_index() == 0:
    print(f"darling-jax train: {len(jax.devices())} {jax.devices()[0].platform} device(s), "
          f"{jax.process_count()} process(es); workdir {config.workdir}", file=sys.stderr)
  result = train(config, progress=not args.no_progress,
                 allow_config_change=args.allow_config_change)
  if result.terminated:
    print(f"darling-jax train: SIGTERM: checkpoint saved at step {result.steps_done}",
          file=sys.stderr)
    return 143
  return 0
