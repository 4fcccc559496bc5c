"""Plumbing check on GSM8K: a tiny random policy, 3 steps, n-gram diversity (no classifier).

Command: darling-jax train --config configs/smoke_gsm8k.py workdir=/tmp/smoke_gsm8k
Hardware: any CPU; about a minute. A random policy never answers correctly, so quality is 0: this
checks that the pipeline runs, not that it learns (configs/smoke.py does that).
"""

from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.fusion import Fusion, FusionConfig
from darling_jax.rl.optimizer import OptimConfig
from darling_jax.rl.update import UpdateConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import (DataConfig, DiversityConfig, DiversitySource, PolicyConfig,
                                      QualityConfig, TrainConfig)


def get_config() -> TrainConfig:
  return TrainConfig(
      policy=PolicyConfig(init_preset="tiny", tokenizer="smollm2"),
      data=DataConfig(dataset="gsm8k", batch_size=4, max_prompt_tokens=256),
      sampler=SamplerConfig(max_new_tokens=16, num_samples=4),
      quality=QualityConfig(functions=(("gsm8k", 1.0),)),
      diversity=DiversityConfig(source=DiversitySource.NGRAM),
      update=UpdateConfig(mini_batches=2, reward=RewardConfig(
          fusion=FusionConfig(mode=Fusion.ADDITIVE))),
      optim=OptimConfig(learning_rate=1e-3),
      steps=3, checkpoint_every=2, workdir="runs/smoke_gsm8k")
