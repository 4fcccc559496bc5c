"""Untrusted model files: index paths confined to the folder, offsets validated, chat templates
bounded in iterations, time, output and value sizes. Each case is one InputError naming the file."""

import json
import pathlib
import time

import numpy as np
import pytest

from darling_jax.errors import InputError
from darling_jax.models.safetensors_io import INDEX_NAME, SafetensorsFolder, save_safetensors
from darling_jax.tokenization.chat_template import RenderLimits, render_chat_template

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def folder(tmp_path):
  save_safetensors({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, tmp_path)
  return tmp_path


@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/passwd", "sub/x.safetensors",
                                   "..", 7, "model.safetensors/../../x.safetensors"])
def test_index_paths_are_confined_to_the_folder(folder, shard):
  (folder / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": shard}}))
  with pytest.raises(InputError, match="inside") as e:
    SafetensorsFolder(folder)
  assert str(folder / INDEX_NAME) in str(e.value)


def _rewrite_header(path: pathlib.Path, edit) -> None:
  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + n])
  edit(header)
  new = json.dumps(header).encode()
  new += b" " * (n - len(new)) if len(new) <= n else b""
  path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["a"].update(data_offsets=[-16, 8]), "offsets are corrupt"),
    (lambda h: h["a"].update(data_offsets=[8, 0]), "offsets are corrupt"),
    (lambda h: h["a"].update(data_offsets=[0, 10**12]), "offsets are corrupt"),
    (lambda h: h["a"].update(shape=[2, -3]), "malformed header"),
    (lambda h: h["a"].update(shape=[2.5, 3]), "malformed header"),
    (lambda h: h["a"].update(data_offsets=["0", "24"]), "malformed header"),
])
def test_offsets_and_shapes_are_validated(folder, edit, message):
  path = folder / "model.safetensors"
  _rewrite_header(path, edit)
  with pytest.raises(InputError, match=message) as e:
    SafetensorsFolder(folder)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("template, limit", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "loop iterations"),
    ("{{ 'a' * 10**9 }}", "characters/items"),
    ("{{ 'a' * 1000000000 }}", "characters/items"),
    ("{{ 2 ** 100000000 }}", "exponent"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "characters of output"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}{{ ns.s|length }}", "characters/items"),
])
def test_template_bombs_stop_at_their_limit_quickly(template, limit):
  t0 = time.monotonic()
  with pytest.raises(InputError, match=limit) as e:
    render_chat_template(template, MESSAGES, where="/models/x/tokenizer_config.json")
  assert time.monotonic() - t0 < 10
  assert "/models/x/tokenizer_config.json" in str(e.value)


def test_recursion_and_time_limits():
  with pytest.raises(InputError, match="failed to render"):
    render_chat_template("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", MESSAGES)
  slow = "{% for i in range(100000) %}{% for j in range(10) %}{% endfor %}{% endfor %}"
  with pytest.raises(InputError, match="took more than"):
    render_chat_template(slow, MESSAGES, limits=RenderLimits(iterations=10**9, seconds=0.05))


def test_real_templates_render_within_the_default_limits():
  chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  msgs = [{"role": "user", "content": "x" * 100_000}] * 20
  out = render_chat_template(chatml, msgs)
  assert out.count("<|im_start|>") == 21 and len(out) > 2_000_000
  loop = "{% for i in range(3) %}{{ i }}{% endfor %}{{ 'ab' * 3 }}{{ 2 ** 10 }}"
  assert render_chat_template(loop, MESSAGES) == "012ababab1024"


@pytest.mark.parametrize("edit, message", [
    ({"num_attention_heads": 0}, "num_attention_heads must be positive"),
    ({"eos_token_id": "x"}, "eos_token_id='x'"),
    ({"eos_token_id": [2, 10**9]}, "eos_token_id"),
    ({"bos_token_id": -1}, "bos_token_id=-1"),
    ({"hidden_size": "wide"}, "malformed field"),
])
def test_bad_config_json_fields_are_one_error_naming_the_file(edit, message):
  from darling_jax.models.decoder_config import DecoderConfig  # pylint: disable=import-outside-toplevel

  good = DecoderConfig.tiny().to_hf()
  with pytest.raises(InputError, match=message) as e:
    DecoderConfig.from_hf({**good, **edit}, source="/m/config.json")
  assert "/m/config.json" in str(e.value)


@pytest.mark.parametrize("content, message", [
    (b'{"bos_token": "\xff\xfe"}', "is not UTF-8 text"), (b"[1, 2]", "must hold a JSON object"),
    (b"{not json", "is not valid JSON")])
def test_bad_tokenizer_config_is_one_error_naming_it(tmp_path, content, message):
  from darling_jax.tokenization.tokenizer import load_hf_tokenizer  # noqa: E501 pylint: disable=import-outside-toplevel

  (tmp_path / "tokenizer_config.json").write_bytes(content)
  with pytest.raises(InputError, match=message) as e:
    load_hf_tokenizer(tmp_path)
  assert "tokenizer_config.json" in str(e.value)
