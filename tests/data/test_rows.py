"""Row schema and strict jsonl reading: field mapping, file:line errors, the skip option."""

import json

import pytest

from darling_jax.data.rows import FieldMapping, Row, read_jsonl, row_from_record
from darling_jax.errors import InputError


def _write(tmp_path, lines, name="d.jsonl"):
  path = tmp_path / name
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def test_reads_fields_extra_and_numbers(tmp_path):
  path = _write(tmp_path, [
      json.dumps({"q": "What is 2+2?", "a": 4.0, "meta": {"level": 3}, "id": "x1"}),
      "",  # blank lines are not records
      json.dumps({"q": "Half of 3?", "a": 1.5, "meta": {"level": 1}, "id": "x2"}),
  ])
  mapping = FieldMapping.from_spec("q", "a", extra=["id", "level=meta.level"])
  rows, report = read_jsonl(path, mapping)
  assert [r.prompt for r in rows] == ["What is 2+2?", "Half of 3?"]
  assert [r.answer for r in rows] == ["4", "1.5"]  # integral floats (AMC23's 27.0) become "27"
  assert rows[1].extra == {"id": "x2", "level": 1}
  assert rows[1].source == f"{path}:3"
  assert rows[0].columns() == {"answer": "4", "id": "x1", "level": 3}
  assert (report.num_rows, report.num_skipped) == (2, 0)


def test_chat_messages_and_context():
  mapping = FieldMapping(prompt="messages")
  row = row_from_record({"messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}]}, mapping, "f:1")
  assert row.prompt == ({"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"})
  with pytest.raises(InputError, match=r"f:2: prompt message 0"):
    row_from_record({"messages": [{"role": "robot", "content": "x"}]}, mapping, "f:2")
  ctx = FieldMapping(prompt="instruction", context="instances.0.input")
  with_input = {"instruction": "Fix the grammar.", "instances": [{"input": "me go"}]}
  without = {"instruction": "Tell a joke.", "instances": [{"input": ""}]}
  assert row_from_record(with_input, ctx, "f:3").prompt == "Fix the grammar.\n\nme go"
  assert row_from_record(without, ctx, "f:4").prompt == "Tell a joke."


@pytest.mark.parametrize("line, problem", [
    ('{"q": "a", "a": "1"', "bad JSON"),
    ('["not", "an", "object"]', "expected a JSON object, got list"),
    ('{"a": "1"}', "missing prompt field 'q'"),
    ('{"q": "a"}', "missing answer field 'a'"),
    ('{"q": "a", "a": null}', "missing answer field 'a'"),
    ('{"q": "a", "a": "  "}', "answer is empty"),
    ('{"q": 5, "a": "1"}', "must be a string or a list of chat messages"),
    ('{"q": "a", "a": true}', "answer must be a string or a number"),
])
def test_malformed_record_names_file_and_line(tmp_path, line, problem):
  path = _write(tmp_path, ['{"q": "fine", "a": "1"}', line, '{"q": "also fine", "a": "2"}'])
  with pytest.raises(InputError) as err:
    read_jsonl(path, FieldMapping(prompt="q", answer="a"))
  assert str(err.value).startswith(f"{path}:2: ")
  assert problem in str(err.value)


def test_skip_malformed_counts_and_reports(tmp_path):
  path = _write(tmp_path, ['{"q": "a", "a": "1"}', "{oops", '{"q": "b"}', '{"q": "c", "a": "3"}'])
  rows, report = read_jsonl(path, FieldMapping(prompt="q", answer="a"), skip_malformed=True)
  assert [r.answer for r in rows] == ["1", "3"]
  assert (report.num_rows, report.num_skipped) == (2, 2)
  assert report.problems[0].startswith(f"{path}:2: bad JSON")
  assert report.problems[1] == f"{path}:3: missing answer field 'a'"
  assert "2 malformed skipped" in report.summary()


def test_missing_extra_field_is_malformed():
  with pytest.raises(InputError, match="missing field 'meta.level'"):
    row_from_record({"q": "a", "meta": {}}, FieldMapping.from_spec("q", extra=["meta.level"]),
                    "f:1")


def test_not_utf8_and_missing_file(tmp_path):
  path = tmp_path / "bin.jsonl"
  path.write_bytes(b'{"q": "ok"}\n{"q": "\xff\xfe"}\n')
  with pytest.raises(InputError, match=r"bin.jsonl:2: line is not valid UTF-8"):
    read_jsonl(path, FieldMapping(prompt="q"))
  with pytest.raises(InputError, match="cannot open dataset file"):
    read_jsonl(tmp_path / "absent.jsonl", FieldMapping(prompt="q"))


def test_mapping_validation():
  with pytest.raises(InputError, match="FieldMapping.prompt"):
    FieldMapping(prompt="a..b")
  with pytest.raises(InputError, match="reserved"):
    FieldMapping(prompt="q", extra=(("answer", "x"),))
  with pytest.raises(InputError, match="duplicate"):
    FieldMapping.from_spec("q", extra=["a.id", "b.id"])


def test_row_json_round_trip():
  row = Row(prompt=({"role": "user", "content": "héllo"},), answer=None,
            extra={"n": [1, 2]}, source="f.jsonl:7")
  assert Row.from_json(row.to_json().encode()) == row
