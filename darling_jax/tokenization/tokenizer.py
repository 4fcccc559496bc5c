"""One tokenizer interface over HF `tokenizers`, sentencepiece and GGUF-embedded vocabularies."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Sequence

from darling_jax.errors import InputError
from darling_jax.tokenization.chat_template import render_chat_template


class Tokenizer:
  """Text <-> ids, special ids and the chat template of one checkpoint.

  Backends: a `tokenizers.Tokenizer` (tokenizer.json, or built from GGUF vocab+merges) or a
  `sentencepiece.SentencePieceProcessor` (tokenizer.model).
  """

  def __init__(
      self,
      backend: Any,
      *,
      bos_token: str | None,
      eos_tokens: Sequence[str],
      pad_token: str | None,
      chat_template: str | None,
      add_bos_token: bool = False,
      source: str = "",
  ):
    self._backend = backend
    self._is_sp = type(backend).__module__.startswith("sentencepiece")
    self.source = source
    self.chat_template = chat_template
    self.add_bos_token = add_bos_token
    self.bos_token = bos_token
    self.eos_tokens = tuple(t for t in dict.fromkeys(eos_tokens) if t is not None)
    if not self.eos_tokens:
      raise InputError(source, "tokenizer defines no EOS token")
    self.pad_token = pad_token if pad_token is not None else self.eos_tokens[0]
    self.bos_token_id = None if bos_token is None else self.token_to_id(bos_token)
    self.eos_token_ids = tuple(self.token_to_id(t) for t in self.eos_tokens)
    self.eos_token_id = self.eos_token_ids[0]
    self.pad_token_id = self.token_to_id(self.pad_token)

  @property
  def vocab_size(self) -> int:
    if self._is_sp:
      return self._backend.get_piece_size()
    return self._backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int:
    tid = self._backend.piece_to_id(token) if self._is_sp else self._backend.token_to_id(token)
    if tid is None or (self._is_sp and tid == self._backend.unk_id() and token != "<unk>"):
      raise InputError(self.source, f"special token {token!r} is not in the vocabulary")
    return int(tid)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; `add_special_tokens` adds BOS where the checkpoint asks for it."""
    if self._is_sp:
      ids = list(self._backend.encode(text))
      if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
        ids = [self.bos_token_id] + ids
      return ids
    return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    if self._is_sp:
      return [self.encode(t, add_special_tokens) for t in texts]
    return [list(e.ids) for e in
            self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    if self._is_sp:
      if skip_special_tokens:
        ids = [i for i in ids if not self._backend.is_control(i)]
      return self._backend.decode(ids)
    return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
    return [self.decode(ids, skip_special_tokens) for ids in batch]

  def apply_chat_template(
      self,
      messages: Sequence[Mapping[str, Any]],
      *,
      add_generation_prompt: bool = True,
      tokenize: bool = False,
      **kwargs: Any,
  ) -> str | list[int]:
    """HF `apply_chat_template` semantics: the rendered string, or its ids (no extra special tokens)."""
    if not self.chat_template:
      raise InputError(self.source, "this tokenizer has no chat_template")
    text = render_chat_template(
        self.chat_template,
        messages,
        add_generation_prompt=add_generation_prompt,
        special_tokens={"bos_token": self.bos_token or "", "eos_token": self.eos_tokens[0],
                        "pad_token": self.pad_token},
        where=f"{self.source}: chat_template",
        **kwargs,
    )
    return self.encode(text, add_special_tokens=False) if tokenize else text


def _token_str(value: Any) -> str | None:
  """tokenizer_config.json stores special tokens as strings or AddedToken dicts."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and "content" in value:
    return value["content"]
  raise InputError("tokenizer_config.json", f"cannot read special token {value!r}")


def read_fast_tokenizer(folder: str | os.PathLike, what: str):
  """`folder/tokenizer.json` as a `tokenizers.Tokenizer` without truncation or padding (callers
  cut and pad themselves); one InputError naming the file when it is absent or unreadable."""
  import tokenizers  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(folder) / "tokenizer.json"
  if not path.exists():
    raise InputError(path, f"not found: {what} needs a HF fast tokenizer.json")
  try:
    tok = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # the Rust error type is not importable; report it as input error
    raise InputError(path, f"cannot be read as a tokenizer ({e})") from None
  tok.no_truncation()
  tok.no_padding()
  return tok


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
  """Ids of each text under a `tokenizers.Tokenizer`, no special tokens, cut to its first
  `max_tokens` (classifier inputs: the caller adds its own separators)."""
  if max_tokens < 1:
    raise InputError("max_tokens", f"must be >= 1, got {max_tokens}")
  for k, t in enumerate(texts):
    if not isinstance(t, str):
      raise InputError(f"texts[{k}]", f"must be a string, got {type(t).__name__}")
  return [e.ids[:max_tokens] for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def read_json_object(path: pathlib.Path) -> dict:
  """A JSON file holding an object; one InputError naming it otherwise."""
  return _read_json(path)


def _read_json(path: pathlib.Path) -> dict:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except UnicodeDecodeError as e:
    raise InputError(path, f"is not UTF-8 text (byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise InputError(path, f"is not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise InputError(path, f"must hold a JSON object, not {type(data).__name__}")
  return data


def load_hf_tokenizer(folder: str | os.PathLike) -> Tokenizer:
  """Loads tokenizer.json (or tokenizer.model) + tokenizer_config.json from a HF model folder."""
  folder = pathlib.Path(folder)
  tcfg_path = folder / "tokenizer_config.json"
  tcfg = _read_json(tcfg_path) if tcfg_path.exists() else {}
  template = tcfg.get("chat_template")
  if isinstance(template, list):  # named templates: HF uses the one called "default"
    template = {t["name"]: t["template"] for t in template}.get("default")
  jinja_path = folder / "chat_template.jinja"
  if template is None and jinja_path.exists():
    try:
      template = jinja_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
      raise InputError(jinja_path, f"is not UTF-8 text (byte {e.start})") from None
  bos = _token_str(tcfg.get("bos_token"))
  eos = [_token_str(tcfg.get("eos_token"))]
  pad = _token_str(tcfg.get("pad_token"))
  if (folder / "tokenizer.json").exists():
    import tokenizers

    try:
      backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the Rust library raises a bare Exception on malformed files
      raise InputError(folder / "tokenizer.json", f"cannot be loaded ({e})") from None
  elif (folder / "tokenizer.model").exists():
    import sentencepiece

    backend = sentencepiece.SentencePieceProcessor()
    try:
      backend.Load(str(folder / "tokenizer.model"))
    except (OSError, RuntimeError) as e:
      raise InputError(folder / "tokenizer.model", f"cannot be loaded ({e})") from None
    bos = bos or backend.id_to_piece(backend.bos_id()) if backend.bos_id() >= 0 else bos
    if eos[0] is None and backend.eos_id() >= 0:
      eos = [backend.id_to_piece(backend.eos_id())]
  else:
    raise InputError(folder, "no tokenizer.json or tokenizer.model in this folder")
  # generation_config.json may list extra stop ids (Llama 3 instruct: <|eot_id|>, <|eom_id|>).
  gen_path = folder / "generation_config.json"
  if gen_path.exists():
    ids = _read_json(gen_path).get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else (ids or [])
    for tid in ids:
      piece = backend.id_to_piece(tid) if hasattr(backend, "id_to_piece") else backend.id_to_token(tid)
      if piece is not None:
        eos.append(piece)
  eos = [e for e in eos if e is not None]
  if not eos:
    cfg_path = folder / "config.json"
    cfg = _read_json(cfg_path) if cfg_path.exists() else {}
    tid = cfg.get("eos_token_id")
    tid = tid[0] if isinstance(tid, list) else tid
    if tid is not None:
      piece = backend.id_to_piece(tid) if hasattr(backend, "id_to_piece") else backend.id_to_token(tid)
      eos = [piece]
  return Tokenizer(
      backend,
      bos_token=bos,
      eos_tokens=eos,
      pad_token=pad,
      chat_template=template,
      add_bos_token=bool(tcfg.get("add_bos_token", False)),
      source=str(folder),
  )


def save_tokenizer(tokenizer: Tokenizer, folder: str | os.PathLike) -> None:
  """Writes tokenizer.json / tokenizer.model + tokenizer_config.json so HF AutoTokenizer loads it."""
  folder = pathlib.Path(folder)
  backend = tokenizer._backend  # pylint: disable=protected-access
  if tokenizer._is_sp:  # pylint: disable=protected-access
    (folder / "tokenizer.model").write_bytes(backend.serialized_model_proto())
  else:
    backend.save(str(folder / "tokenizer.json"))
  cfg: dict[str, Any] = {
      "bos_token": tokenizer.bos_token,
      "eos_token": tokenizer.eos_tokens[0],
      "pad_token": tokenizer.pad_token,
      "add_bos_token": tokenizer.add_bos_token,
      "tokenizer_class": "PreTrainedTokenizerFast",
  }
  if tokenizer.chat_template:
    cfg["chat_template"] = tokenizer.chat_template
  (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
  if len(tokenizer.eos_token_ids) > 1:
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": list(tokenizer.eos_token_ids)}, indent=2))
