"""Named, cached assets of the demo and the small configs: built on first use, reused after.

  demo-policy        the demo's starting policy (2 layers, ~1.5 min to pre-train on 2 CPU cores)
  demo prompts       train.jsonl (three ways of asking per request) / eval.jsonl (the fourth)
  default classifier `darling-jax classifier train` on the human-labelled NoveltyBench pairs with
                     the default recipe, from the packaged MiniLM

Cache: $DARLING_CACHE_DIR or ~/.cache/darling_jax. Each asset folder name carries a hash of what
produced it, so a changed recipe never reuses a stale build; builds are written to a temporary
folder and renamed, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import sys

from darling_jax.errors import InputError

ASSET_VERSION = 1


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("DARLING_CACHE_DIR", pathlib.Path.home() / ".cache"
                                     / "darling_jax"))


def _digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _build_lock(out: pathlib.Path):
  """Serialises builds of one asset across processes (parallel test workers, several runs)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out.with_name(out.name + ".lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _log(msg: str) -> None:
  print(f"[darling_jax assets] {msg}", file=sys.stderr, flush=True)


def demo_policy() -> pathlib.Path:
  """The pre-trained demo policy as a HF folder (pre-trains it on first use, ~1.5 min)."""
  from darling_jax.demo import pretrain
  from darling_jax.demo.activities import REQUESTS, VALID_SHARE, ZIPF_EXPONENT

  cfg = pretrain.PretrainConfig()
  key = {"v": ASSET_VERSION, "cfg": dataclasses.asdict(cfg), "requests": REQUESTS,
         "share": VALID_SHARE, "zipf": ZIPF_EXPONENT}
  out = cache_dir() / "demo" / f"policy-{_digest(key)}"
  with _build_lock(out):
    if not (out / "config.json").exists():
      _log(f"pre-training the demo policy into {out} (once; cached afterwards)")
      pretrain.pretrain(out, cfg, log=_log)
  return out


def demo_prompts() -> tuple[pathlib.Path, pathlib.Path]:
  from darling_jax.demo.activities import REQUESTS
  from darling_jax.demo.task import write_prompt_files

  folder = cache_dir() / "demo" / f"prompts-{_digest({'v': ASSET_VERSION, 'r': REQUESTS})}"
  with _build_lock(folder):
    if not (folder / "eval.jsonl").exists():
      tmp = folder.with_name(folder.name + ".partial")
      write_prompt_files(tmp)
      os.replace(tmp, folder)
  return folder / "train.jsonl", folder / "eval.jsonl"


def default_classifier_pairs() -> pathlib.Path:
  from darling_jax.data.local_data import resolve_data_dir

  path = resolve_data_dir() / "noveltybench" / "classifier_pairs_train.jsonl"
  if not path.exists():
    raise InputError(path, "missing: the default classifier is trained on these human labels")
  return path


def default_classifier(recipe: str = "default") -> pathlib.Path:
  """`darling-jax classifier train` output for the human-labelled pairs (trains on first use)."""
  from darling_jax.diversity.classifier_recipes import get_recipe

  pairs = default_classifier_pairs()
  key = {"v": ASSET_VERSION, "recipe": dataclasses.asdict(get_recipe(recipe)),
         "pairs": hashlib.sha256(pairs.read_bytes()).hexdigest()}
  out = cache_dir() / "classifiers" / f"{recipe}-{_digest(key)}"
  with _build_lock(out):
    if not (out / "classifier.json").exists():
      _log(f"training the {recipe!r} classifier on {pairs} into {out} (once; cached afterwards)")
      from darling_jax.diversity.classifier_eval import read_pairs
      from darling_jax.diversity.classifier_train import train

      tmp = out.with_name(out.name + ".partial")
      shutil.rmtree(tmp, ignore_errors=True)
      train(read_pairs(pairs), get_recipe(recipe), tmp)
      shutil.rmtree(out, ignore_errors=True)
      os.replace(tmp, out)
  return out
