"""`darling-jax` entry point: dispatches to one subcommand module per verb.

Each subcommand module defines `register(subparsers)` and `run(args) -> int`; modules import jax and
models inside `run`, so `darling-jax --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from darling_jax.errors import InputError

# verb -> module under darling_jax.cli
SUBCOMMANDS = {
    "generate": "generate",
    "train": "train",
    "eval": "evaluate",
    "classifier": "classifier",
    "plan": "plan",
    "compile": "compile",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="darling-jax", description="DARLING: diversity-aware RL for language models, in JAX."
  )
  sub = parser.add_subparsers(dest="command", required=True)
  for verb, module in SUBCOMMANDS.items():
    try:
      mod = importlib.import_module(f"darling_jax.cli.{module}")
    except ModuleNotFoundError as e:
      if e.name != f"darling_jax.cli.{module}":
        raise
      continue  # verb not built yet
    mod.register(sub, verb)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  # argparse stops filling a positional list at the first flag: `workdir=x --no-progress steps=2`
  # leaves steps=2 over. key=value words are overrides wherever they stand.
  if extra and isinstance(getattr(args, "overrides", None), list):
    stray = [w for w in extra if w.startswith("-") or "=" not in w]
    if not stray:
      args.overrides.extend(extra)
      extra = []
  if extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    return int(args.run(args) or 0)
  except InputError as e:
    print(f"darling-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    # A read-only or full disk is the machine's state, not a bug: one line, not a traceback.
    # Checkpoints are written atomically (Orbax renames complete ones), so none is half-written.
    where = f"{e.filename}: " if e.filename else ""
    print(f"darling-jax {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
