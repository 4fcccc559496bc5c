"""grain prompt pipeline: seeded order, disjoint covering shards, length filter, exact resume."""

import json

import numpy as np
import pytest

from darling_jax.data.pipeline import (
    PipelineConfig, format_prompt, prepare_prompts, prompt_iterator)
from darling_jax.data.registry import MATH_TEMPLATE, PLAIN_TEMPLATE
from darling_jax.data.rows import Row
from darling_jax.errors import InputError


class WordTokenizer:
  """One token per whitespace-separated word; a toy chat template with a generation prompt."""

  pad_token_id = 0

  def __init__(self, chat: bool = True):
    self.chat_template = "toy" if chat else None

  def apply_chat_template(self, messages, *, add_generation_prompt=True):
    text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
    return text + (" <assistant>" if add_generation_prompt else "")

  def encode(self, text, add_special_tokens=False):
    ids = [1 + sum(map(ord, w)) % 97 for w in text.split()]
    return ([98] if add_special_tokens else []) + ids


def _rows(n, long_every=0):
  rows = []
  for i in range(n):
    words = 40 if long_every and i % long_every == 0 else 3
    rows.append(Row(prompt=" ".join(["w"] * (words - 1) + [f"p{i}"]), answer=str(i),
                    extra={"id": i}, source=f"toy.jsonl:{i + 1}"))
  return rows


def _config(**kw):
  base = dict(batch_size=4, max_prompt_tokens=16, seed=0, shard_index=0, shard_count=1)
  return PipelineConfig(**(base | kw))


def _take(it, n):
  return [next(it).indices_B.tolist() for _ in range(n)]


def test_batch_contents():
  tok = WordTokenizer()
  it = prompt_iterator(_rows(10), tok, _config(shuffle=False, max_prompt_tokens=24), MATH_TEMPLATE)
  batch = next(it)
  assert batch.indices_B.tolist() == [0, 1, 2, 3] and len(batch) == 4
  assert batch.texts[0] == "<user> w w p0 Let's think step by step and output the final answer " \
                           "within \\boxed{}. <assistant>"
  assert batch.prompts[0] == "w w p0"
  assert batch.columns == {"answer": ["0", "1", "2", "3"], "id": [0, 1, 2, 3]}
  assert batch.sources[3] == "toy.jsonl:4"
  assert batch.prompt_ids_BxL.shape == (4, 24) and batch.prompt_ids_BxL.dtype == np.int32
  length = len(tok.encode(batch.texts[0]))
  assert batch.prompt_lengths_B.tolist() == [length] * 4
  np.testing.assert_array_equal(batch.prompt_ids_BxL[0, :length], tok.encode(batch.texts[0]))
  assert np.all(batch.prompt_ids_BxL[:, length:] == tok.pad_token_id)


def test_plain_text_without_chat_template_gets_special_tokens():
  tok = WordTokenizer(chat=False)
  assert format_prompt("hi there", tok) == "hi there"
  [ex], _ = prepare_prompts(_rows(1), tok, 16, PLAIN_TEMPLATE)
  assert ex.ids[0] == 98  # the tokenizer's BOS: plain text has no template to supply one


def test_same_seed_same_order_different_seed_different_order():
  tok = WordTokenizer()
  a = _take(prompt_iterator(_rows(40), tok, _config(seed=7)), 10)
  b = _take(prompt_iterator(_rows(40), tok, _config(seed=7)), 10)
  c = _take(prompt_iterator(_rows(40), tok, _config(seed=8)), 10)
  assert a == b
  assert a != c
  # Each epoch (10 batches of 4 = 40 rows) is a permutation, and epochs are reshuffled.
  assert sorted(sum(a, [])) == list(range(40))
  it = prompt_iterator(_rows(40), tok, _config(seed=7))
  epoch1, epoch2 = sum(_take(it, 10), []), sum(_take(it, 10), [])
  assert sorted(epoch2) == list(range(40)) and epoch1 != epoch2


@pytest.mark.parametrize("shard_count", [2, 3])
def test_host_shards_are_disjoint_and_cover_each_epoch(shard_count):
  tok = WordTokenizer()
  n = 23  # not a multiple of the shard count
  per_epoch = []
  for shard in range(shard_count):
    cfg = _config(batch_size=1, seed=3, shard_index=shard, shard_count=shard_count)
    it = prompt_iterator(_rows(n), tok, cfg)
    size = it.shard_size
    per_epoch.append([sum(_take(it, size), []) for _ in range(2)])  # two epochs
  for epoch in range(2):
    shards = [set(per_epoch[s][epoch]) for s in range(shard_count)]
    assert sum(len(s) for s in shards) == n
    assert set().union(*shards) == set(range(n))


def test_overlong_prompts_dropped_and_counted():
  tok = WordTokenizer()
  rows = _rows(30, long_every=3)  # rows 0, 3, ..., 27 have 40 words
  it = prompt_iterator(rows, tok, _config(batch_size=5, shuffle=False))
  assert (it.stats.num_rows, it.stats.num_kept, it.stats.num_dropped) == (30, 20, 10)
  assert it.stats.dropped[0].startswith("toy.jsonl:1 (")
  assert it.stats.longest_tokens == len(tok.encode(format_prompt(rows[0].prompt, tok)))
  seen = sum(_take(it, 4), [])
  assert sorted(seen) == [i for i in range(30) if i % 3]
  with pytest.raises(InputError, match="all 30 prompts are longer than 2 tokens"):
    prompt_iterator(rows, tok, _config(max_prompt_tokens=2))


def test_state_restore_resumes_exactly():
  tok = WordTokenizer()
  cfg = _config(batch_size=3, seed=11)
  reference = _take(prompt_iterator(_rows(10), tok, cfg), 12)  # crosses epoch boundaries
  it = prompt_iterator(_rows(10), tok, cfg)
  head = _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  resumed = prompt_iterator(_rows(10), tok, cfg)
  resumed.set_state(state)
  assert head + _take(resumed, 7) == reference


def test_state_from_other_stream_is_refused():
  tok = WordTokenizer()
  state = prompt_iterator(_rows(10), tok, _config(seed=1)).get_state()
  with pytest.raises(InputError, match="different data, seed"):
    prompt_iterator(_rows(10), tok, _config(seed=2)).set_state(state)
  with pytest.raises(InputError, match="not a PromptIterator state"):
    prompt_iterator(_rows(10), tok, _config(seed=1)).set_state({"next_index": 3})


def test_finite_epochs_and_remainder():
  tok = WordTokenizer()
  it = prompt_iterator(_rows(10), tok, _config(num_epochs=1, shuffle=False, drop_remainder=False))
  assert [len(b) for b in it] == [4, 4, 2]


def test_config_validation():
  with pytest.raises(InputError, match="batch_size"):
    PipelineConfig(batch_size=0, max_prompt_tokens=8)
  with pytest.raises(InputError, match="shard_index"):
    PipelineConfig(batch_size=1, max_prompt_tokens=8, shard_index=2, shard_count=2)
  with pytest.raises(InputError, match="both"):
    PipelineConfig(batch_size=1, max_prompt_tokens=8, shard_index=0)
  with pytest.raises(InputError, match="cannot fill 4 shards"):
    prompt_iterator(_rows(3), WordTokenizer(), _config(shard_index=0, shard_count=4))


def test_default_shard_is_the_jax_process():
  cfg = PipelineConfig(batch_size=1, max_prompt_tokens=8)
  assert cfg.shard() == (0, 1)
