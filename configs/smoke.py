"""Smoke run: a few DARLING steps on the demo task, on CPU, in about two minutes.

Reproduces nothing from the paper; it exercises the whole loop (sampler -> verifier quality ->
learned classifier -> multiplicative fusion -> compiled update -> checkpoints) on real parts:
the demo policy (pre-trained on first use, ~1.5 min, then cached), the demo task's verifier,
and the default classifier (trained on the human-labelled NoveltyBench pairs on first use, then
cached).

Command:  darling-jax train --config configs/smoke.py workdir=/tmp/smoke
Hardware: any CPU. Runtime: ~1-2 min once the cached assets exist.
Expected: DIR/metrics.jsonl with one line per step, checkpoints under DIR/checkpoints/.
"""

from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.optimizer import OptimConfig
from darling_jax.rl.update import UpdateConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import (DataConfig, DiversityConfig, DiversitySource, PolicyConfig,
                                      QualityConfig, TrainConfig)


def get_config() -> TrainConfig:
  return TrainConfig(
      policy=PolicyConfig(path="demo-policy", architecture="demo_policy"),
      data=DataConfig(dataset="demo", prompt_field="prompt", answer_field="request",
                      prompt_template="plain",
                      batch_size=8, max_prompt_tokens=96),
      sampler=SamplerConfig(max_new_tokens=24, num_samples=8),  # G = 8 as in the paper
      quality=QualityConfig(functions=(("darling_jax.demo.task.activity_quality", 1.0),)),
      diversity=DiversityConfig(source=DiversitySource.CLASSIFIER, classifier="default"),
      update=UpdateConfig(mini_batches=2, reward=RewardConfig()),
      optim=OptimConfig(learning_rate=1e-4),  # a 0.14M-param policy moves at this rate in few steps
      steps=4, checkpoint_every=2, workdir="runs/smoke")
