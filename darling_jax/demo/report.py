"""runs/demo/report.md: the DARLING vs GRPO comparison, with plots, a table and samples.

Besides the runs' own metrics (verifier quality, the learned classifier's classes and diversity,
policy entropy, pass@k), the report counts *ground-truth* distinct fitting activities from the
saved evaluation samples (the demo task knows each answer's meaning), which also measures how well
the classifier's partition agrees with the truth.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from darling_jax.demo.activities import REQUESTS
from darling_jax.demo.task import parse_activity

_ASK_TO_REQUEST = {ask: rid for rid, (asks, _) in REQUESTS.items() for ask in asks}
LABELS = {"base": "base policy", "grpo": "GRPO (quality only)", "darling": "DARLING (q x div)"}
COLORS = {"base": "0.5", "grpo": "tab:orange", "darling": "tab:blue"}


def _jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def load_run(workdir: pathlib.Path) -> dict[str, Any]:
  samples: dict[int, list[dict]] = {}
  for row in _jsonl(workdir / "eval_samples.jsonl"):
    samples.setdefault(row["step"], []).append(row)
  return {"metrics": _jsonl(workdir / "metrics.jsonl"), "evals": _jsonl(workdir / "eval.jsonl"),
          "samples": samples}


def ground_truth(rows: list[dict]) -> dict[str, float]:
  """Per-prompt means over saved samples: fitting activities named (distinct), quality."""
  fitting, quality = [], []
  for row in rows:
    rid = _ASK_TO_REQUEST.get(row["prompt"])
    parsed = [parse_activity(t) for t in row["samples"]]
    ok = [p for p in parsed if p is not None and p[0] == rid]
    fitting.append(len(set(ok)))
    quality.append(len(ok) / max(1, len(parsed)))
  return {"distinct_fitting": float(np.mean(fitting)), "quality": float(np.mean(quality))}


def _series(runs: list[dict], key: str, source: str = "metrics") -> tuple[np.ndarray, np.ndarray]:
  """(steps, values [seeds, steps]) of `key`, over the steps every seed logged."""
  per_seed = [{r["step"]: r[key] for r in run[source] if key in r} for run in runs]
  steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
  return np.asarray(steps), np.asarray([[p[s] for s in steps] for p in per_seed], float)


def _gt_series(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  steps = sorted(set.intersection(*(set(r["samples"]) for r in runs)))
  return np.asarray(steps), np.asarray([[ground_truth(r["samples"][s])["distinct_fitting"]
                                         for s in steps] for r in runs])


def _band(ax, steps, values, label, color, smooth=1):
  if values.size == 0:
    return
  if smooth > 1:
    kernel = np.ones(smooth) / smooth
    values = np.stack([np.convolve(np.pad(v, (smooth - 1, 0), mode="edge"), kernel, "valid")
                       for v in values])
  mean = values.mean(0)
  ax.plot(steps, mean, label=label, color=color)
  if len(values) > 1:
    ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2, linewidth=0)


def _plots(out: pathlib.Path, runs: dict[str, list[dict]]) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  files = []
  fig, axes = plt.subplots(2, 2, figsize=(10, 7))
  panels = [("quality", "quality (verifier, training rollouts)"),
            ("classes_per_group", "classes per group of 8 (classifier)"),
            ("diversity", "mean div (the run's diversity measure)"),
            ("entropy", "policy entropy (nats/token)")]
  for ax, (key, title) in zip(axes.flat, panels):
    for method, rs in runs.items():
      _band(ax, *_series(rs, key), LABELS[method], COLORS[method], smooth=5)
    ax.set_title(title)
    ax.set_xlabel("step")
  axes[0, 0].legend()
  fig.suptitle("Training (5-step moving average; band = min..max over seeds)")
  fig.tight_layout()
  fig.savefig(out / "training.png", dpi=110)
  plt.close(fig)
  files.append("training.png")

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for method, rs in runs.items():
    _band(axes[0], *_series(rs, "pass@1", "evals"), LABELS[method], COLORS[method])
    _band(axes[1], *_series(rs, "novelty_distinct", "evals"), LABELS[method], COLORS[method])
    _band(axes[2], *_gt_series(rs), LABELS[method], COLORS[method])
  axes[0].set_title("pass@1 (held-out phrasings)")
  axes[1].set_title("distinct of 16 (classifier, greedy)")
  axes[2].set_title("distinct fitting activities of 16 (truth)")
  for ax in axes:
    ax.set_xlabel("step")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out / "eval.png", dpi=110)
  plt.close(fig)
  files.append("eval.png")

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, rs, pick in (("base", runs["grpo"], 0), ("grpo", runs["grpo"], -1),
                         ("darling", runs["darling"], -1)):
    ks, curves = _pass_at_k(rs, pick)
    ax.plot(ks, curves.mean(0), marker="o", label=LABELS[name], color=COLORS[name])
    if len(curves) > 1:
      ax.fill_between(ks, curves.min(0), curves.max(0), color=COLORS[name], alpha=0.2, lw=0)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k")
  ax.set_ylabel("pass@k")
  ax.set_title("pass@k at the end of training")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "pass_at_k.png", dpi=110)
  plt.close(fig)
  files.append("pass_at_k.png")
  return files


def _pass_at_k(runs: list[dict], pick: int) -> tuple[list[int], np.ndarray]:
  evals = [sorted(r["evals"], key=lambda e: e["step"])[pick] for r in runs]
  ks = sorted(int(k.split("@")[1]) for k in evals[0] if k.startswith("pass@"))
  return ks, np.asarray([[e[f"pass@{k}"] for k in ks] for e in evals])


def _final(runs: list[dict], pick: int = -1) -> dict[str, np.ndarray]:
  out: dict[str, list[float]] = {}
  for r in runs:
    ev = sorted(r["evals"], key=lambda e: e["step"])[pick]
    gt = ground_truth(r["samples"][ev["step"]])
    tail = [m["entropy"] for m in r["metrics"][-5:]] if pick == -1 else [
        m["entropy"] for m in r["metrics"][:1]]
    for k, v in (("pass@1", ev["pass@1"]), ("pass@4", ev.get("pass@4", np.nan)),
                 ("pass@16", ev.get("pass@16", np.nan)),
                 ("distinct (classifier)", ev.get("novelty_distinct", np.nan)),
                 ("distinct fitting (truth)", gt["distinct_fitting"]),
                 ("entropy", float(np.mean(tail)))):
      out.setdefault(k, []).append(v)
  return {k: np.asarray(v, float) for k, v in out.items()}


def _fmt(v: np.ndarray) -> str:
  return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def write_report(out: pathlib.Path, settings, timings: dict[str, Any]) -> pathlib.Path:
  runs = {m: [load_run(out / f"{m}-seed{s}") for s in settings.seeds] for m in ("grpo", "darling")}
  files = _plots(out, runs)
  base, grpo, darling = _final(runs["grpo"], 0), _final(runs["grpo"]), _final(runs["darling"])
  n = len(settings.seeds)
  lines = [
      "# DARLING vs quality-only GRPO: the demo", "",
      "Same starting policy, same seeds, same budget; the only difference is the reward fusion "
      f"(GRPO: r = q; DARLING: r = q x div). {n} seeds x {settings.steps} steps of 8 prompts x 8 "
      "rollouts each. Evaluation: 16 samples for each of the 10 held-out phrasings (T = 1).", "",
      "| metric (final evaluation) | base policy | GRPO | DARLING | DARLING - GRPO (paired) |",
      "|---|---|---|---|---|"]
  for key in grpo:
    diff = darling[key] - grpo[key]
    noise = (f"{diff.mean():+.3f} (seed sd {diff.std(ddof=1):.3f})" if n > 1
             else f"{diff.mean():+.3f}")
    lines.append(f"| {key} | {_fmt(base[key])} | {_fmt(grpo[key])} | {_fmt(darling[key])} | "
                 f"{noise} |")
  lines += ["", f"Values are mean ± sample standard deviation over {n} seeds; the last column "
            "pairs runs by seed. With so few seeds, a difference smaller than about twice its "
            "seed standard deviation should be read as noise.", ""]
  lines += [f"![{f}]({f})" for f in files]
  lines += ["", "## Agreement of the learned classifier with the truth", "",
            "The classifier was trained on human-labelled NoveltyBench pairs, not on this task. "
            "On the final evaluations, classifier distinct vs ground-truth distinct activities "
            "(all answers, including unfitting ones):", ""]
  lines += _agreement(runs)
  lines += ["", "## Samples (final evaluation, seed " + str(settings.seeds[0]) + ")", ""]
  lines += _samples(runs)
  lines += ["", "## How this was made", "",
            "    darling-jax demo    # = make demo", "",
            f"Settings: {settings}. Wall time: prep {timings['prep_s']:.0f} s, total "
            f"{timings['total_s']:.0f} s; per run: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings["runs_s"].items()) + ".",
            "Per-run logs: `*/metrics.jsonl` (every step), `*/eval.jsonl`, TensorBoard under "
            "`*/tensorboard`, checkpoints under `*/checkpoints`."]
  path = out / "report.md"
  path.write_text("\n".join(lines) + "\n")
  (out / "summary.json").write_text(json.dumps(
      {name: {k: v.tolist() for k, v in d.items()} for name, d in
       (("base", base), ("grpo", grpo), ("darling", darling))}, indent=2))
  return path


def _agreement(runs: dict[str, list[dict]]) -> list[str]:
  rows = []
  for method, rs in runs.items():
    clf, truth = [], []
    for r in rs:
      ev = sorted(r["evals"], key=lambda e: e["step"])[-1]
      clf.append(ev.get("novelty_distinct", np.nan))
      truth.append(np.mean([len({parse_activity(t) or ("x", i) for i, t in enumerate(row["samples"])})
                            for row in r["samples"][ev["step"]]]))
    rows.append(f"- {LABELS[method]}: classifier {np.nanmean(clf):.2f}, truth {np.mean(truth):.2f} "
                "distinct answers of 16")
  return rows


def _samples(runs: dict[str, list[dict]], prompts: int = 2, per: int = 8) -> list[str]:
  out = []
  first = {m: rs[0] for m, rs in runs.items()}
  last_step = {m: max(r["samples"]) for m, r in first.items()}
  for i in range(prompts):
    rows = {m: first[m]["samples"][last_step[m]][i] for m in first}
    base = first["grpo"]["samples"][min(first["grpo"]["samples"])][i]
    out.append(f"**{rows['grpo']['prompt']}**")
    out.append("")
    for name, row in (("base", base), ("grpo", rows["grpo"]), ("darling", rows["darling"])):
      out.append(f"*{LABELS[name]}*:")
      out.append("")
      out += [f"    {t}" for t in row["samples"][:per]]
      out.append("")
  return out
