"""Host text helpers: padding/bucketing, stop-aware decoding and `generate_texts`."""

import importlib.util
import pathlib

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.sampling.text import bucket_length, completion_ids, generate_texts, left_pad

_spec = importlib.util.spec_from_file_location(
    "sampling_tiny_checkpoints", pathlib.Path(__file__).with_name("tiny_checkpoints.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.mark.parametrize("n,want", [(1, 8), (8, 8), (9, 16), (33, 64), (64, 64), (65, 128),
                                    (130, 192)])
def test_bucket_length(n, want):
  assert bucket_length(n) == want


def test_left_pad_puts_real_tokens_last():
  ids, mask = left_pad([[5, 6], [7, 8, 9]], pad_id=0)
  assert ids.shape == mask.shape == (2, 8)
  np.testing.assert_array_equal(ids[:, -3:], [[0, 5, 6], [7, 8, 9]])
  np.testing.assert_array_equal(mask.sum(-1), [2, 3])
  assert not mask[:, :5].any()


def test_left_pad_rejects_empty_and_too_long():
  with pytest.raises(InputError, match=r"prompts\[1\]"):
    left_pad([[1], []], pad_id=0)
  with pytest.raises(InputError, match="length=2"):
    left_pad([[1, 2, 3]], pad_id=0, length=2)


def test_completion_ids_drop_the_stop_token_and_padding():
  assert completion_ids(np.array([4, 5, 2, 0, 0]), 3, stop_ids=(2,)) == [4, 5]
  assert completion_ids(np.array([4, 5, 6]), 3, stop_ids=(2,)) == [4, 5, 6]


def test_generate_texts_greedy_does_not_depend_on_batching():
  model, tokenizer = tiny.spiky_decoder(), tiny.word_tokenizer()
  prompts = ["t1 t9 t14", "t1 t30 t4 t7 t7 t60 t3", "t1 t12"]
  kw = dict(num_samples=2, max_new_tokens=6, greedy=True)
  by_two = generate_texts(model, tokenizer, prompts, batch_size=2, **kw)  # 2 batches, 1 padded
  by_four = generate_texts(model, tokenizer, prompts, batch_size=4, **kw)
  assert by_two == by_four
  assert len(by_two) == 3 and all(len(s) == 2 and s[0] == s[1] for s in by_two)
  for samples in by_two:
    words = samples[0].split()
    assert 0 < len(words) <= 6 and f"t{tiny.EOS}" not in words
