"""Quality rewards q[b, i] for DARLING: the user-function protocol and the built-in verifiers.

Public surface:
  QualityFn, score_groups, check_scores   the protocol (protocol.py; its docstring is the contract)
  WeightedSum, BUILTINS, builtin, from_weights   combining and naming (combine.py)
  MathVerifyReward, gsm8k_reward          Math-Verify 0/1, per-answer time limits (math_verify.py)
  extract_answer, AnswerSource            final-answer extraction from model text (math_answer.py)
  DeadlinePool, PoolConfig                the time-limited worker pool (deadline_pool.py)

Nothing here imports JAX: workers import this package and stay light.
"""

from darling_jax.rewards.combine import BUILTINS, WeightedSum, builtin, from_weights
from darling_jax.rewards.deadline_pool import DeadlinePool, MapStats, PoolConfig, StartMethod
from darling_jax.rewards.math_answer import (
    AnswerSource, extract_answer, last_boxed, normalize_number, parse_number)
from darling_jax.rewards.math_verify import (
    GoldFormat, MathVerifyConfig, MathVerifyReward, gsm8k_reward)
from darling_jax.rewards.protocol import QualityFn, check_batch, check_scores, score_groups

__all__ = [
    "AnswerSource", "BUILTINS", "DeadlinePool", "GoldFormat", "MapStats", "MathVerifyConfig",
    "MathVerifyReward", "PoolConfig", "QualityFn", "StartMethod", "WeightedSum", "builtin",
    "check_batch", "check_scores", "extract_answer", "from_weights", "gsm8k_reward",
    "last_boxed", "normalize_number", "parse_number", "score_groups",
]
