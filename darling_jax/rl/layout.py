"""How the update lays a step's sequences out (update.layout), and the one bucketing helper.

  padded    every sequence is P + N columns, as the sampler returned it (no host work)
  bucketed  one sequence per row, cut to the step's longest real prompt + response and rounded
            up to a length bucket; micro-batches of update.micro_batch_prompts prompts
  packed    several sequences per row (segment ids, per-segment positions), rows of one bucket
            length, micro-batches of update.max_tokens_per_micro_batch tokens

Shapes the jitted step sees are drawn from small fixed sets (`bucket_up`), so the number of
compiles stays bounded however lengths vary from step to step.
"""

from __future__ import annotations

import bisect
import enum
from typing import Sequence

from darling_jax.errors import InputError


class Layout(enum.Enum):
  PADDED = "padded"
  BUCKETED = "bucketed"
  PACKED = "packed"


def geometric_buckets(base: int, limit: int) -> tuple[int, ...]:
  """base * {1, 1.5} * 2^k up to `limit` (inclusive of the first value >= limit): at most ~33%
  over the need, two buckets per octave. base 1: 1, 2, 3, 4, 6, 8, 12, ..."""
  out, v = [], base
  while True:
    out.append(v)
    if 3 * v % 2 == 0:
      out.append(3 * v // 2)
    if out[-1] >= limit:
      break
    v *= 2
  return tuple(sorted(set(x for x in out)))


# Default row lengths: 64, 96, 128, 192, ... (30 buckets up to a million positions).
DEFAULT_LENGTH_BUCKETS = geometric_buckets(64, 1 << 20)
# Row counts and micro-batch counts (in units of the batch-axis device count / of one).
COUNT_BUCKETS = geometric_buckets(1, 1 << 20)


def bucket_up(n: int, buckets: Sequence[int], where: str = "update.length_buckets") -> int:
  """The smallest bucket >= n (buckets ascending), or an InputError naming `where`."""
  i = bisect.bisect_left(buckets, n)
  if i == len(buckets):
    raise InputError(where, f"{n} exceeds the largest bucket {buckets[-1]}")
  return buckets[i]


def check_buckets(buckets: Sequence[int], where: str = "update.length_buckets") -> None:
  if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
    raise InputError(where, f"must be positive ints, got {tuple(buckets)}")
  if list(buckets) != sorted(set(buckets)):
    raise InputError(where, f"must be strictly ascending, got {tuple(buckets)}")
