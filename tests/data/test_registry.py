"""Registry entries against the real shared data: every file parses under its mapping."""

import pathlib

import pytest

from darling_jax.data import registry
from darling_jax.data.rows import FieldMapping, read_jsonl
from darling_jax.errors import InputError

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (shared data) is absent")

# Rows per (dataset, split), from each SOURCE.md (math_train: 7,474 minus 4 without an answer).
EXPECTED_ROWS = {
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math500", "test"): 500,
    ("math_train", "train"): 7470, ("aime24", "test"): 30, ("aime25", "test"): 30,
    ("amc23", "test"): 40, ("noveltybench_curated", "test"): 100,
    ("noveltybench_wildchat", "test"): 1000, ("mt_bench", "test"): 80,
    ("self_instruct", "test"): 252,
}


def test_every_split_is_listed():
  listed = {(name, split) for name in registry.dataset_names()
            for split in registry.get_dataset(name).splits}
  assert listed == set(EXPECTED_ROWS)


@needs_shared
@pytest.mark.parametrize("name, split", sorted(EXPECTED_ROWS))
def test_real_files_parse(name, split):
  spec = registry.get_dataset(name)
  rows, report = read_jsonl(spec.file(split, SHARED), spec.mapping,
                            skip_malformed=spec.skip_malformed)
  assert len(rows) == EXPECTED_ROWS[(name, split)]
  assert report.num_skipped == (4 if name == "math_train" else 0)
  assert all(isinstance(r.prompt, str) and r.prompt.strip() for r in rows)
  if spec.task == registry.Task.MATH:
    assert all(r.answer for r in rows)
  else:
    assert all(r.answer is None for r in rows)


@needs_shared
def test_known_fields_come_through():
  amc = read_jsonl(registry.get_dataset("amc23").file("test", SHARED),
                   registry.get_dataset("amc23").mapping)[0]
  assert amc[0].answer == "27" and amc[0].extra == {"id": 0}
  gsm = read_jsonl(SHARED / "gsm8k/test.jsonl", registry.get_dataset("gsm8k").mapping)[0]
  assert gsm[0].answer.endswith("#### 18")  # the gsm8k quality function reads after "####"
  mt = read_jsonl(SHARED / "mt_bench/question.jsonl", registry.get_dataset("mt_bench").mapping)[0]
  assert mt[0].prompt.startswith("Compose an engaging travel blog post")


def test_math_template_and_chat_messages():
  spec = registry.get_dataset("math500")
  [msg] = spec.template.messages("Find $x$.")
  assert msg == {"role": "user", "content": "Find $x$. Let's think step by step and output the "
                                            "final answer within \\boxed{}."}
  template = registry.PromptTemplate(user="Q: {prompt}", system="You are terse.")
  chat = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"})
  out = template.messages(chat)
  assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
  assert out[1]["content"] == "a" and out[3]["content"] == "Q: c"
  assert template.plain_text("hi") == "You are terse.\n\nQ: hi"
  with pytest.raises(InputError, match="must contain"):
    registry.PromptTemplate(user="no placeholder")


def test_custom_dataset_defaults(tmp_path):
  path = tmp_path / "mine.jsonl"
  path.write_text('{"problem": "1+1?", "answer": "2"}\n')
  spec = registry.custom_dataset(path, FieldMapping(prompt="problem", answer="answer"))
  assert (spec.name, spec.task, spec.quality) == ("mine", registry.Task.MATH, "math_verify")
  assert spec.template == registry.MATH_TEMPLATE and spec.file("train", None) == path
  chat = registry.custom_dataset(path, FieldMapping(prompt="problem"), name="x", split="test")
  assert (chat.task, chat.quality, chat.splits) == (registry.Task.OPEN_ENDED, None, ("test",))
  with pytest.raises(InputError, match="does not exist"):
    registry.custom_dataset(tmp_path / "absent.jsonl", FieldMapping(prompt="q"))


def test_unknown_names():
  with pytest.raises(InputError, match="unknown dataset 'gsm9k'.*gsm8k"):
    registry.get_dataset("gsm9k")
  with pytest.raises(InputError, match="has no split 'train'"):
    registry.get_dataset("math500").file("train", SHARED)
