"""The demo's training config (configs/demo.py re-exports it; `darling-jax demo` runs it)."""

from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.optimizer import OptimConfig
from darling_jax.rl.update import UpdateConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import (DataConfig, DiversityConfig, DiversitySource, EvalConfig,
                                      PolicyConfig, QualityConfig, TrainConfig)


def demo_config() -> TrainConfig:
  return TrainConfig(
      policy=PolicyConfig(path="demo-policy"),
      data=DataConfig(dataset="demo", prompt_field="prompt", answer_field="request",
                      prompt_template="plain", batch_size=8, max_prompt_tokens=96,
                      eval_dataset="demo", eval_split="eval"),
      sampler=SamplerConfig(max_new_tokens=24, num_samples=8, temperature=1.0),  # G = 8, T = 1
      quality=QualityConfig(functions=(("darling_jax.demo.task.activity_quality", 1.0),)),
      diversity=DiversityConfig(source=DiversitySource.CLASSIFIER, classifier="default"),
      update=UpdateConfig(mini_batches=2, reward=RewardConfig()),  # q * div, Dr.GRPO advantage
      # A 0.14M-parameter policy needs a far larger step than the paper's 1e-6 for 8B models.
      optim=OptimConfig(learning_rate=2e-3),
      eval=EvalConfig(every=10, num_prompts=10, num_samples=16, at_start=True, save_samples=10),
      steps=30, checkpoint_every=10, workdir="runs/demo/darling-seed0")
