"""Prompt batches for training and evaluation: template, tokenize, filter, shuffle, shard, batch.

Axis legend: B prompts per batch (per host), L prompt tokens (padded to `max_prompt_tokens`).

    it = prompt_iterator(load_split("math_train", "train"), tokenizer,
                         PipelineConfig(batch_size=64, max_prompt_tokens=512, seed=0),
                         template=get_dataset("math_train").template)
    batch = next(it)              # PromptBatch: texts, prompt_ids_BxL, columns["answer"], ...
    state = it.get_state()        # JSON-serialisable; store it in the checkpoint
    it.set_state(state)           # a resumed run sees exactly the prompts it would have seen

Stages:
  1. prepare (once, on every host identically): each row's prompt goes through the template and the
     tokenizer's chat template (plain text when it has none) and is tokenized; prompts longer than
     `max_prompt_tokens` are dropped and counted in `FilterStats` (never an error, unless nothing is
     left). Filtering before sharding is what keeps hosts in step: a lazy filter after sharding
     would give hosts different numbers of batches and deadlock a multi-host step.
  2. grain: `MapDataset` over the kept prompts -> global seeded shuffle (reshuffled every epoch)
     -> this host's shard `[shard_index::shard_count]` (per epoch the shards are disjoint and cover
     the kept prompts) -> repeat -> batch of B -> iterator. The iterator state is grain's position,
     so restoring it replays nothing and skips nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any, Iterator, Protocol, Sequence

import grain
import numpy as np
from jaxtyping import Int

from darling_jax.data.registry import PLAIN_TEMPLATE, PromptTemplate
from darling_jax.data.rows import Prompt, Row
from darling_jax.errors import InputError

_log = logging.getLogger(__name__)
# Dropped prompts named in FilterStats / the log: enough to see a pattern.
MAX_REPORTED_DROPS = 10


class PromptTokenizer(Protocol):
  """What the pipeline needs of a tokenizer (darling_jax.tokenization.Tokenizer has it)."""

  chat_template: str | None
  pad_token_id: int

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

  def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str: ...


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of a prompt pipeline.

  Attributes:
    batch_size: B, prompts per batch on this host (a multi-host run's global batch is
      B * shard_count).
    max_prompt_tokens: prompts with more tokens (after templating) are dropped and counted; also the
      padded width L of `prompt_ids_BxL`, so the shape is static for jit.
    seed: shuffle seed (each epoch is reshuffled from it deterministically).
    shuffle: False keeps file order (evaluation).
    num_epochs: passes over the data; None repeats forever (training).
    drop_remainder: drop a last batch smaller than B (keeps shapes static).
    shard_index: this host's shard; None: `jax.process_index()`.
    shard_count: number of shards; None: `jax.process_count()`.
  """

  batch_size: int
  max_prompt_tokens: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  drop_remainder: bool = True
  shard_index: int | None = None
  shard_count: int | None = None

  def __post_init__(self):
    for name in ("batch_size", "max_prompt_tokens"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise InputError(f"PipelineConfig.{name}", f"must be a positive int, got {value!r}")
    epochs = self.num_epochs
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
      raise InputError("PipelineConfig.num_epochs", f"must be None or >= 1, got {epochs!r}")
    if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
      raise InputError("PipelineConfig.seed", f"must be an int in [0, 2**32), got {self.seed!r}")
    if (self.shard_index is None) != (self.shard_count is None):
      raise InputError("PipelineConfig.shard_index",
                       "give both shard_index and shard_count, or neither")
    if self.shard_count is not None and not 0 <= self.shard_index < self.shard_count:
      raise InputError("PipelineConfig.shard_index",
                       f"must be in [0, {self.shard_count}), got {self.shard_index!r}")

  def shard(self) -> tuple[int, int]:
    """(shard_index, shard_count), defaulting to this JAX process among all processes."""
    if self.shard_count is not None:
      return self.shard_index, self.shard_count
    import jax  # only when the process layout is asked for

    return jax.process_index(), jax.process_count()


@dataclasses.dataclass(frozen=True)
class PromptExample:
  """One prepared prompt: its row, templated text and token ids."""

  index: int  # position in the source split
  row: Row
  text: str
  ids: tuple[int, ...]


@dataclasses.dataclass
class FilterStats:
  """What the length filter kept and dropped."""

  num_rows: int
  num_kept: int
  max_prompt_tokens: int
  longest_tokens: int = 0  # of any prompt, kept or not
  dropped: list[str] = dataclasses.field(default_factory=list)  # first sources, with lengths

  @property
  def num_dropped(self) -> int:
    return self.num_rows - self.num_kept


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """B prompts, ready for sampling and for the quality function.

  Attributes:
    indices_B: positions of the rows in the source split.
    prompts: the rows' prompts as stored (before templating): what a quality function receives.
    texts: the templated text the policy is prompted with.
    prompt_ids_BxL: token ids, right-padded with the pad id to L = max_prompt_tokens.
    prompt_lengths_B: real lengths.
    columns: "answer" and the extra columns, each a list of length B.
    sources: "file:line" of each row.
  """

  indices_B: Int[np.ndarray, "B"]
  prompts: list[Prompt]
  texts: list[str]
  prompt_ids_BxL: Int[np.ndarray, "B L"]
  prompt_lengths_B: Int[np.ndarray, "B"]
  columns: dict[str, list[Any]]
  sources: list[str]

  def __len__(self) -> int:
    return len(self.texts)


def format_prompt(prompt: Prompt, tokenizer: PromptTokenizer,
                  template: PromptTemplate = PLAIN_TEMPLATE) -> str:
  """The text the policy sees: the chat template with a generation prompt, else plain text."""
  if tokenizer.chat_template:
    return tokenizer.apply_chat_template(template.messages(prompt), add_generation_prompt=True)
  return template.plain_text(prompt)


def prepare_prompts(source: Sequence[Row], tokenizer: PromptTokenizer, max_prompt_tokens: int,
                    template: PromptTemplate = PLAIN_TEMPLATE,
                    ) -> tuple[list[PromptExample], FilterStats]:
  """Templates and tokenizes every row; drops (and counts) those over `max_prompt_tokens`."""
  has_chat = bool(tokenizer.chat_template)
  rows = list(source)
  texts = [format_prompt(row.prompt, tokenizer, template) for row in rows]
  # A chat template writes its own BOS; plain text gets the tokenizer's special tokens.
  ids_list = [tokenizer.encode(text, add_special_tokens=not has_chat) for text in texts]
  stats = FilterStats(num_rows=len(rows), num_kept=0, max_prompt_tokens=max_prompt_tokens)
  kept = []
  for index, (row, text, ids) in enumerate(zip(rows, texts, ids_list)):
    stats.longest_tokens = max(stats.longest_tokens, len(ids))
    if len(ids) > max_prompt_tokens:
      if len(stats.dropped) < MAX_REPORTED_DROPS:
        stats.dropped.append(f"{row.source} ({len(ids)} tokens)")
      continue
    kept.append(PromptExample(index=index, row=row, text=text, ids=tuple(ids)))
  stats.num_kept = len(kept)
  if stats.num_dropped:
    _log.warning("dropped %d of %d prompts longer than %d tokens (first: %s)", stats.num_dropped,
                 stats.num_rows, max_prompt_tokens, ", ".join(stats.dropped[:3]))
  if not kept:
    raise InputError("max_prompt_tokens", f"all {stats.num_rows} prompts are longer than "
                                          f"{max_prompt_tokens} tokens (longest "
                                          f"{stats.longest_tokens}); raise max_prompt_tokens")
  return kept, stats


def _collate(examples: Sequence[PromptExample], width: int, pad_id: int) -> PromptBatch:
  ids_BxL = np.full((len(examples), width), pad_id, dtype=np.int32)
  for b, ex in enumerate(examples):
    ids_BxL[b, :len(ex.ids)] = ex.ids
  names = ["answer", *examples[0].row.extra] if examples else ["answer"]
  columns = {name: [ex.row.columns().get(name) for ex in examples] for name in names}
  return PromptBatch(
      indices_B=np.asarray([ex.index for ex in examples], dtype=np.int64),
      prompts=[ex.row.prompt for ex in examples],
      texts=[ex.text for ex in examples],
      prompt_ids_BxL=ids_BxL,
      prompt_lengths_B=np.asarray([len(ex.ids) for ex in examples], dtype=np.int32),
      columns=columns,
      sources=[ex.row.source for ex in examples],
  )


class PromptIterator(Iterator[PromptBatch]):
  """Iterates PromptBatches; `get_state`/`set_state` checkpoint its exact position."""

  def __init__(self, examples: list[PromptExample], stats: FilterStats, config: PipelineConfig,
               pad_id: int):
    shard_index, shard_count = config.shard()
    if len(examples) < shard_count:
      raise InputError("PipelineConfig.shard_count",
                       f"{len(examples)} prompts cannot fill {shard_count} shards")
    self.config = config
    self.stats = stats
    self.shard = (shard_index, shard_count)
    ds = grain.MapDataset.source(examples)
    if config.shuffle:
      ds = ds.shuffle(seed=config.seed)
    ds = ds[shard_index::shard_count]
    self.shard_size = len(ds)
    ds = ds.repeat(config.num_epochs)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder,
                  batch_fn=lambda exs: _collate(exs, config.max_prompt_tokens, pad_id))
    # Everything is in memory already: reader threads would only contend for the GIL.
    self._iter = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    self._fingerprint = self._make_fingerprint(examples)

  def _make_fingerprint(self, examples: list[PromptExample]) -> str:
    """Identifies the stream: a state only restores into the same data, order and sharding."""
    h = hashlib.sha256()
    fields = dataclasses.asdict(self.config) | {"shard": list(self.shard)}
    h.update(json.dumps(fields, sort_keys=True).encode())
    for ex in examples:
      h.update(f"{ex.index}:{ex.row.source}:{len(ex.ids)}\n".encode())
    return h.hexdigest()[:32]

  def __next__(self) -> PromptBatch:
    return next(self._iter)

  def get_state(self) -> dict[str, Any]:
    """The position, as a JSON-serialisable dict (goes into the training checkpoint)."""
    return {"grain": self._iter.get_state(), "fingerprint": self._fingerprint}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes at a position from `get_state` of an iterator over the same data and config."""
    if not isinstance(state, dict) or "grain" not in state or "fingerprint" not in state:
      raise InputError("data iterator state", f"not a PromptIterator state: {state!r}")
    if state["fingerprint"] != self._fingerprint:
      raise InputError("data iterator state", "was saved for different data, seed, batch size or "
                                              "sharding; cannot resume this stream from it")
    self._iter.set_state(state["grain"])


def prompt_iterator(source: Sequence[Row], tokenizer: PromptTokenizer, config: PipelineConfig,
                    template: PromptTemplate = PLAIN_TEMPLATE) -> PromptIterator:
  """The full pipeline over a row source (e.g. `builders.load_split(...)`)."""
  examples, stats = prepare_prompts(source, tokenizer, config.max_prompt_tokens, template)
  return PromptIterator(examples, stats, config, tokenizer.pad_token_id)
