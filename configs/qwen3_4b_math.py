"""The paper's math recipe: DARLING on Qwen3-4B-Base with DeepScaleR prompts.

Reproduces: darling.md section 4, "Qwen3-4B-Base, DeepScaleR 10k": pass@1 15.4 (base) -> 23.4 (GRPO)
-> 26.9 (DARLING) and pass@128 50.2 -> 53.4 -> 61.0, averaged over AIME25, HMMT25, Brumo25 and
OlympiadBench at n = 256 samples, T = 0.6, top-p 0.95.

You supply (no hub access from here):
  policy.path         a HF folder of Qwen/Qwen3-4B-Base
  data.dataset        DeepScaleR 10k as jsonl with fields problem, answer
  diversity.classifier  a math-strategy classifier folder (`darling-jax classifier train`), the
                      paper's: Qwen3-Embedding-4B + 2-way head, tau 0.5 (89% held-out accuracy)

Settings follow the authors' launch script, verl/math_scripts/darling.batch in
facebookresearch/darling (line numbers of its initial commit, c07a323): B = 256 (line 61), G = 8
(62), 8,192 response tokens (63), 1,024 prompt tokens with over-long prompts filtered (73-75), lr
1e-6 (78), PPO mini-batch 64 prompts -> 4 updates per step (80), token-budget micro-batches of
40,000 tokens per GPU (81, 83), no KL loss (84), sampling T = 1.0 (90), validation n = 8 at
T = 0.6, top-p 0.95 (98-101), no std normalisation of advantages (104), multiplicative fusion
(117), validation and checkpoints every 25 steps (113-114), 10 epochs (115): 10k / 256 = 39 steps
an epoch, 390 steps. tau = 0.5 and the classifier are the paper's (darling.md section 2).

Command (64 chips, e.g. a v5p-128 slice or 8 hosts x 8 H100):
  darling-jax plan    --config configs/qwen3_4b_math.py --devices 64
  darling-jax compile --config configs/qwen3_4b_math.py --topology v5p:4x4x4
  darling-jax train   --config configs/qwen3_4b_math.py policy.path=/ckpt/Qwen3-4B-Base \
      data.dataset=/data/deepscaler_10k.jsonl diversity.classifier=/ckpt/math_classifier
Not run end to end in this repository.
"""

from darling_jax.rl.darling_reward import RewardConfig
from darling_jax.rl.kl import KLConfig
from darling_jax.rl.optimizer import OptimConfig
from darling_jax.rl.policy_loss import PolicyLossConfig
from darling_jax.rl.update import UpdateConfig
from darling_jax.sampling.config import SamplerConfig
from darling_jax.sharding.mesh import MeshConfig
from darling_jax.train.config import (DataConfig, DiversityConfig, DiversitySource, EvalConfig,
                                      PolicyConfig, QualityConfig, TrainConfig)


def get_config() -> TrainConfig:
  return TrainConfig(
      policy=PolicyConfig(path="Qwen3-4B-Base", architecture="qwen3_4b_base",
                          param_dtype="float32", dtype="bfloat16", remat=True),
      data=DataConfig(dataset="deepscaler_10k.jsonl", prompt_field="problem",
                      answer_field="answer", batch_size=256,  # 256 prompts per step
                      max_prompt_tokens=1024, eval_dataset="aime25", eval_split="test"),
      sampler=SamplerConfig(max_new_tokens=8192, num_samples=8, temperature=1.0),  # G = 8, T = 1
      quality=QualityConfig(functions=(("math_verify", 1.0),), timeout_s=5.0),
      diversity=DiversityConfig(source=DiversitySource.CLASSIFIER, classifier="math_classifier",
                                classifier_params=4_021_774_336),
      update=UpdateConfig(
          mini_batches=4,  # mini-batch 64 prompts: 4 optimizer updates per step, one PPO epoch
          # Packed rows, micro-batches by tokens: the script's 40,000 tokens per GPU (line 81)
          # times the 64 chips this recipe is planned for.
          layout="packed", max_tokens_per_micro_batch=40_000 * 64,
          policy_loss=PolicyLossConfig(epsilon=0.2, epsilon_high=0.2, dual_clip_c=3.0,
                                       loss_agg_mode="token-mean"),
          kl=KLConfig(beta=0.0),  # no reference model for math
          reward=RewardConfig(threshold=0.5)),  # the math classifier's tau (darling.md 2)
      optim=OptimConfig(learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0),
      mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
      # The script validates on its own competition set; AIME25 stands in (30 problems).
      eval=EvalConfig(every=25, num_prompts=30, num_samples=8, temperature=0.6, top_p=0.95),
      steps=390,  # 10 epochs of 39 steps
      checkpoint_every=25, workdir="runs/qwen3_4b_math")
