"""Tests `darling_jax/tokenization/`: encodings and chat templates against transformers."""

import json

import pytest

from darling_jax.errors import InputError
from darling_jax.tokenization import load_hf_tokenizer, render_chat_template

pytestmark = pytest.mark.torch

LLAMA3 = (
    "{{- bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = 'You are helpful.' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}"
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + "
    "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
QWEN_LIKE = (
    "{%- set ns = namespace(last_user=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}"
    "{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- if loop.index0 == ns.last_user %} [meta {{ {'n': loop.length} | tojson }}]{% endif %}"
    "<|im_end|>\n{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there  "},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Ünïcode 🙂 ok?"}],
]
TEXTS = ["Hello world", "  leading spaces and\nnew lines\t", "naïve café 東京 🙂", "x**2 + 3.14",
         "<|eot_id|> special in text"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|im_start|>", "<|im_end|>", "<|end_of_text|>"]
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator(TEXTS * 10 + ["the quick brown fox jumps over the lazy dog"] * 20,
                              trainer=trainer)
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend,
                                             bos_token="<|begin_of_text|>",
                                             eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
  tok.chat_template = LLAMA3
  folder = tmp_path_factory.mktemp("hf_tok")
  tok.save_pretrained(folder)
  (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [
      tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")]}))
  return folder, tok


def test_encodings_match_transformers(hf_folder):
  folder, ref = hf_folder
  ours = load_hf_tokenizer(folder)
  for text in TEXTS:
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
    ids = ours.encode(text)
    for skip in (True, False):
      assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
  assert ours.eos_token_ids == (ref.convert_tokens_to_ids("<|eot_id|>"),
                                ref.convert_tokens_to_ids("<|end_of_text|>"))
  assert ours.bos_token_id == ref.bos_token_id and ours.pad_token_id == ref.pad_token_id


@pytest.mark.parametrize("template", [LLAMA3, QWEN_LIKE], ids=["llama3", "qwen_like"])
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_apply_chat_template(hf_folder, template, gen):
  _, ref = hf_folder
  for chat in CHATS:
    want = ref.apply_chat_template(chat, chat_template=template, tokenize=False,
                                   add_generation_prompt=gen)
    got = render_chat_template(template, chat, add_generation_prompt=gen,
                               special_tokens={"bos_token": ref.bos_token,
                                               "eos_token": ref.eos_token})
    assert got == want


def test_tokenized_chat_matches(hf_folder):
  folder, ref = hf_folder
  ours = load_hf_tokenizer(folder)
  for chat in CHATS:
    assert ours.apply_chat_template(chat, tokenize=True) == list(
        ref.apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                return_dict=False))


def test_template_errors_are_input_errors(hf_folder):
  folder, _ = hf_folder
  ours = load_hf_tokenizer(folder)
  with pytest.raises(InputError, match="roles must alternate"):
    ours.apply_chat_template([{"role": "assistant", "content": "x"}])
  with pytest.raises(InputError, match="not a valid jinja2 template"):
    render_chat_template("{% for %}", [])
  # the sandbox refuses attribute escapes in untrusted templates
  with pytest.raises(InputError):
    render_chat_template("{{ ''.__class__.__mro__ }}", [])


def test_save_round_trip_loads_in_transformers(hf_folder, tmp_path):
  import transformers

  from darling_jax.tokenization.tokenizer import save_tokenizer

  folder, _ = hf_folder
  ours = load_hf_tokenizer(folder)
  save_tokenizer(ours, tmp_path)
  again = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    assert again.encode(text, add_special_tokens=False) == ours.encode(text)
  assert again.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True) == \
      ours.apply_chat_template(CHATS[0])


def test_sentencepiece_model(tmp_path):
  import sentencepiece as spm

  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 50))
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"),
                                 vocab_size=60, model_type="bpe", bos_id=1, eos_id=2, pad_id=0,
                                 unk_id=3, character_coverage=1.0)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
  ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
  ours = load_hf_tokenizer(tmp_path)
  for text in TEXTS[:2]:
    assert ours.encode(text) == ref.encode(text)
    assert ours.encode(text, add_special_tokens=True) == [1] + ref.encode(text)
  assert ours.eos_token_ids == (2,) and ours.bos_token_id == 1


def test_missing_tokenizer(tmp_path):
  with pytest.raises(InputError, match="no tokenizer.json or tokenizer.model"):
    load_hf_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(InputError, match="tokenizer.json.*cannot be loaded"):
    load_hf_tokenizer(tmp_path)
