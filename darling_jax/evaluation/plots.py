"""pass@k curves as a PNG (matplotlib's Agg canvas directly: no display, no global backend)."""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

from darling_jax.errors import InputError


def plot_pass_at_k(curves: Mapping[str, Mapping[int | str, float]], path: str | os.PathLike, *,
                   title: str = "pass@k", ylabel: str = "pass@k") -> pathlib.Path:
  """Draws several k -> value curves on one log2-x axes and saves a PNG.

  Args:
    curves: label -> {k: value} (keys may be ints or their strings, as in the summary JSON).
    path: output .png path (parent folders are created).
    title: axes title.
    ylabel: y-axis label (e.g. "maj@k").

  Returns:
    The written path.
  """
  if not curves:
    raise InputError("plot_pass_at_k", "no curves to draw")
  from matplotlib import figure
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  # A bare Figure (not pyplot) so concurrent evaluations never share global pyplot state.
  fig = figure.Figure(figsize=(6, 4), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for label, curve in curves.items():
    points = sorted((int(k), float(v)) for k, v in curve.items())
    if not points:
      raise InputError("plot_pass_at_k", f"curve {label!r} is empty")
    ks, values = zip(*points)
    ax.plot(ks, values, marker="o", label=label)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.set_ylim(0.0, 1.0)
  ax.grid(True, alpha=0.3)
  ax.legend()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", bbox_inches="tight")
  return path
