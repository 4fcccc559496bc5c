"""GGUF files of the Llama family (llama.cpp's format) -> `Decoder` + `Tokenizer`.

Quantised tensors (Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantised on the host with the `gguf`
package and trained/sampled in float32 or bfloat16 from then on. llama.cpp stores attn_q / attn_k rows
permuted for its interleaved RoPE; we undo that to use HF's rotate-half layout.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from darling_jax.errors import InputError
from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.hf_decoder import build_sharded
from darling_jax.sharding.rules import DEFAULT_RULES, LogicalRules
from darling_jax.tokenization.tokenizer import Tokenizer


def _open(path: pathlib.Path):
  import gguf

  if not path.exists():
    raise InputError(path, "file not found")
  try:
    return gguf.GGUFReader(str(path))
  except Exception as e:  # gguf raises ValueError/struct.error/... on corrupt files
    raise InputError(path, f"is not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, path: pathlib.Path, default: Any = None, required: bool = True) -> Any:
  import gguf

  f = reader.fields.get(key)
  if f is None:
    if required and default is None:
      raise InputError(path, f"GGUF metadata has no {key!r}")
    return default
  if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
    if len(f.types) > 1 and f.types[1] == gguf.GGUFValueType.STRING:
      return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
    return [f.parts[i][0].item() for i in f.data]
  if f.types and f.types[0] == gguf.GGUFValueType.STRING:
    return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
  value = f.parts[f.data[0]][0]
  if f.types and f.types[0] == gguf.GGUFValueType.FLOAT32:
    # float32 1e-5 widens to 9.99999974e-06; its shortest decimal form is what the author wrote.
    return float(repr(value).removeprefix("np.float32(").removesuffix(")"))
  return value.item()


def gguf_config(reader, path: pathlib.Path) -> DecoderConfig:
  arch = _field(reader, "general.architecture", path)
  if arch != "llama":
    raise InputError(path, f"unknown GGUF architecture {arch!r}; supported: llama (Llama, SmolLM2)")
  names = {t.name for t in reader.tensors}
  d = int(_field(reader, "llama.embedding_length", path))
  n = int(_field(reader, "llama.attention.head_count", path))
  vocab = _field(reader, "llama.vocab_size", path, required=False)
  if vocab is None:
    vocab = len(_field(reader, "tokenizer.ggml.tokens", path))
  head_dim = int(_field(reader, "llama.attention.key_length", path, default=d // n, required=False))
  eos = _field(reader, "tokenizer.ggml.eos_token_id", path, required=False)
  return DecoderConfig(
      family=Family.LLAMA,
      vocab_size=int(vocab),
      hidden_size=d,
      intermediate_size=int(_field(reader, "llama.feed_forward_length", path)),
      num_layers=int(_field(reader, "llama.block_count", path)),
      num_heads=n,
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", path, default=n,
                              required=False)),
      head_dim=head_dim,
      rope_theta=float(_field(reader, "llama.rope.freq_base", path, default=10000.0,
                              required=False)),
      rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", path)),
      tie_word_embeddings="output.weight" not in names,
      max_position_embeddings=int(_field(reader, "llama.context_length", path, default=4096,
                                         required=False)),
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", path, required=False),
      eos_token_ids=() if eos is None else (int(eos),),
  )


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row interleave of attn_q / attn_k ([out, in] matrices)."""
  rows, cols = w.shape
  return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tensors(reader, path: pathlib.Path, cfg: DecoderConfig) -> dict[str, np.ndarray]:
  import gguf

  out = {}
  for t in reader.tensors:
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as e:
      raise InputError(path, f"cannot dequantise tensor {t.name!r} ({e})") from None
    out[t.name] = np.asarray(w, np.float32).reshape([int(x) for x in reversed(t.shape)])
  return out


def gguf_tokenizer(reader, path: pathlib.Path) -> Tokenizer:
  """A byte-level BPE `tokenizers.Tokenizer` rebuilt from the GGUF vocab, merges and token types."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers

  model_kind = _field(reader, "tokenizer.ggml.model", path)
  if model_kind != "gpt2":
    raise InputError(path, f"tokenizer.ggml.model={model_kind!r} is not supported (gpt2 BPE only)")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  types = _field(reader, "tokenizer.ggml.token_type", path, default=[1] * len(tokens),
                 required=False)
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", path)]
  vocab = {tok: i for i, tok in enumerate(tokens)}
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                            byte_fallback=False))
  pre = _field(reader, "tokenizer.ggml.pre", path, default="default", required=False)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  # llama.cpp's "smollm" pre-tokenizer (like StarCoder's) splits digits one by one before the GPT-2
  # regex; SmolLM2's own tokenizer.json does the same with Digits(individual_digits=True).
  if pre in ("smollm", "starcoder", "refact"):
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre in ("default", "gpt2", "gpt-2"):
    backend.pre_tokenizer = byte_level
  else:
    raise InputError(path, f"tokenizer.ggml.pre={pre!r} is not supported")
  backend.decoder = decoders.ByteLevel()
  # Token type 3 (control) / 4 (user-defined) are atomic special tokens such as <|im_start|>.
  specials = [tokenizers.AddedToken(tok, special=True, normalized=False)
              for tok, ty in zip(tokens, types) if ty in (3, 4)]
  backend.add_special_tokens(specials)
  bos = _field(reader, "tokenizer.ggml.bos_token_id", path, required=False)
  eos = _field(reader, "tokenizer.ggml.eos_token_id", path)
  pad = _field(reader, "tokenizer.ggml.padding_token_id", path, required=False)
  return Tokenizer(
      backend,
      bos_token=None if bos is None else tokens[bos],
      eos_tokens=[tokens[eos]],
      pad_token=None if pad is None else tokens[pad],
      chat_template=_field(reader, "tokenizer.chat_template", path, required=False),
      add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", path, default=False,
                                required=False)),
      source=str(path),
  )


def load_gguf(
    path: str | os.PathLike,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    mesh: Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
) -> tuple[Decoder, Tokenizer]:
  path = pathlib.Path(path)
  reader = _open(path)
  cfg = gguf_config(reader, path)
  w = _tensors(reader, path, cfg)
  N, K, H, D, V, L = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size,
                      cfg.vocab_size, cfg.num_layers)

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in w:
      raise InputError(path, f"GGUF has no tensor {name!r}")
    if w[name].shape != shape:
      raise InputError(path, f"tensor {name!r} has shape {w[name].shape}, metadata implies {shape}")
    return w[name]

  per_layer = {  # ours -> (gguf suffix, [out, in] shape, [out, in] -> ours)
      "attn_norm": ("attn_norm.weight", (D,), lambda a: a),
      "q": ("attn_q.weight", (N * H, D),
            lambda a: unpermute_rope_rows(a, N).reshape(N, H, D).transpose(2, 0, 1)),
      "k": ("attn_k.weight", (K * H, D),
            lambda a: unpermute_rope_rows(a, K).reshape(K, H, D).transpose(2, 0, 1)),
      "v": ("attn_v.weight", (K * H, D), lambda a: a.reshape(K, H, D).transpose(2, 0, 1)),
      "o": ("attn_output.weight", (D, N * H), lambda a: a.reshape(D, N, H).transpose(1, 2, 0)),
      "mlp_norm": ("ffn_norm.weight", (D,), lambda a: a),
      "gate": ("ffn_gate.weight", (cfg.intermediate_size, D), lambda a: a.T),
      "up": ("ffn_up.weight", (cfg.intermediate_size, D), lambda a: a.T),
      "down": ("ffn_down.weight", (D, cfg.intermediate_size), lambda a: a.T),
  }
  host: dict[tuple[str, ...], np.ndarray] = {
      ("embed",): get("token_embd.weight", (V, D)),
      ("final_norm",): get("output_norm.weight", (D,)),
  }
  if not cfg.tie_word_embeddings:
    host[("lm_head",)] = get("output.weight", (V, D)).T
  for ours, (suffix, shape, conv) in per_layer.items():
    host[("layers", ours)] = np.stack([conv(get(f"blk.{i}.{suffix}", shape)) for i in range(L)])
  sources = {p: (lambda idx, a=a: a[idx]) for p, a in host.items()}
  model = build_sharded(cfg, sources, param_dtype=param_dtype, dtype=dtype, mesh=mesh, rules=rules)
  return model, gguf_tokenizer(reader, path)
