"""The demo: DARLING vs quality-only GRPO on a task with many right answers (`make demo`).

Task (darling_jax/demo): ten requests ("something to do on a rainy afternoon", ...) with eight
fitting activities each; a verifier scores 1 for an answer naming a fitting activity, 0 otherwise.
Policy: a 2-layer Llama-architecture model pre-trained on a skewed mix of fitting and unfitting
answers (~22% quality, a few popular answers). Diversity: the default classifier, trained on the
human-labelled NoveltyBench pairs. `darling-jax demo` runs this config with both fusions over
several seeds and writes runs/demo/report.md.

Command:  darling-jax train --config configs/demo.py               (one DARLING run)
          darling-jax demo                                           (the comparison + report)
Hardware: 2 CPU cores. Runtime: ~1 min per run once the cached policy/classifier exist.
"""

from darling_jax.demo.config import demo_config


def get_config():
  return demo_config()
