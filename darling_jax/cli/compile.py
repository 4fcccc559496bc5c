"""`darling-jax compile --config configs/NAME.py --topology v5e:2x2 [key=value ...]`."""

from __future__ import annotations

import argparse
import sys


def register(subparsers, verb: str) -> None:
  p = subparsers.add_parser(
      verb, help="compile every program of a training step for a TPU slice, without a TPU",
      description="Lowers and compiles, with the TPU compiler (libtpu) and the trainer's own "
      "shardings, micro-batching and donation, the sampler, the classifier's pair scoring, the "
      "reward model, the reference forward and the update step of a config for a TPU topology, "
      "and prints each program's per-device memory against the chip's HBM. No weights are read: "
      "shapes come from policy.architecture and the classifier's / reward model's config. Exits "
      "0 iff every program fits; otherwise 2, naming the program. The last stdout line is JSON.")
  p.add_argument("--config", required=True, help="a configs/*.py file defining get_config()")
  p.add_argument("--config-arg", default=None, help="passed to get_config(arg)")
  p.add_argument("--topology", required=True,
                 help="TPU slice CHIP:AxB[xC], e.g. v5e:2x2, v5e:4x8, v5p:4x4x4, v6e:8x8")
  p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. mesh.tensor=4)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  import json

  from darling_jax.train.aot import check, compile_step
  from darling_jax.train.config import load_config_file
  from darling_jax.train.overrides import apply_overrides

  config = apply_overrides(load_config_file(args.config, args.config_arg), args.overrides)
  report = compile_step(config, args.topology,
                        progress=lambda msg: print(msg, file=sys.stderr, flush=True))
  print(report.table())
  print(json.dumps(report.as_json()), flush=True)
  check(report)
  return 0
