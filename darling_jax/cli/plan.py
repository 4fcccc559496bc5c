"""`darling-jax plan --config configs/NAME.py [--devices N] [--device-memory GiB] [key=value ...]`."""

from __future__ import annotations

import argparse


def register(subparsers, verb: str) -> None:
  p = subparsers.add_parser(
      verb, help="per-device memory of a run on its mesh; refuses plans that cannot fit",
      description="Prints per-device bytes for params, optimizer state, gradients, reference, KV "
      "cache, classifier and peak update activations on the configured mesh. Exits with status 2 "
      "(naming the largest term) when the plan exceeds the device memory.")
  p.add_argument("--config", required=True)
  p.add_argument("--config-arg", default=None)
  p.add_argument("--devices", type=int, default=None,
                 help="plan for this many devices (default: the devices present)")
  p.add_argument("--device-memory", type=float, default=None,
                 help="GiB per device (default: the accelerator's; none on CPU)")
  p.add_argument("--json", action="store_true", help="print the plan as JSON")
  p.add_argument("overrides", nargs="*", help="key=value overrides (e.g. mesh.fsdp=8)")
  p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  import json

  from darling_jax.train.config import load_config_file
  from darling_jax.train.overrides import apply_overrides
  from darling_jax.train.plan import as_json, check, detect_device_memory, make_plan

  config = apply_overrides(load_config_file(args.config, args.config_arg), args.overrides)
  if args.devices is None:
    import jax

    devices = len(jax.devices())
  else:
    devices = args.devices
  memory = (int(args.device_memory * 2**30) if args.device_memory is not None
            else detect_device_memory() if args.devices is None else None)
  plan = make_plan(config, devices, memory)
  print(json.dumps(as_json(plan), indent=2) if args.json else plan.table())
  check(plan)
  return 0
