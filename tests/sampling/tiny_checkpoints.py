"""Tiny models and tokenizers for the sampling tests (imported by path: pytest uses importlib mode).

Random decoders are made "spiky" (larger weights than the 0.02 init) so that logits are well
separated and greedy/argmax comparisons are not decided by float rounding.
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from darling_jax.models.decoder import Decoder
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.state_tree import map_variables
from darling_jax.tokenization.tokenizer import Tokenizer

VOCAB = 64
EOS, PAD, BOS = 2, 0, 1


def word_tokenizer(vocab_size: int = VOCAB) -> Tokenizer:
  """Whitespace word-level tokenizer over the words t0 .. t{V-1}; t2 is EOS, t0 padding, t1 BOS."""
  import tokenizers
  from tokenizers import models, pre_tokenizers

  vocab = {f"t{i}": i for i in range(vocab_size)}
  backend = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
  backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return Tokenizer(backend, bos_token=f"t{BOS}", eos_tokens=[f"t{EOS}"], pad_token=f"t{PAD}",
                   chat_template=None, source="word_tokenizer")


def spiky_decoder(family: Family = Family.LLAMA, seed: int = 0, vocab_size: int = VOCAB) -> Decoder:
  """A 2-layer float32 decoder whose logits spread over several nats.

  Parameters are drawn with NumPy into an abstract (eval_shape) model: an eager `Decoder(...)` init
  compiles one XLA program per random op, which costs tens of seconds on a busy 2-core machine.
  """
  base = DecoderConfig.tiny(family, vocab_size=vocab_size)
  # Untied: with tied embeddings a random model mostly predicts its current input token again.
  cfg = DecoderConfig(**{**base.__dict__, "eos_token_ids": (EOS,), "bos_token_id": BOS,
                         "tie_word_embeddings": False})
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path: tuple[str, ...], var: nnx.Variable) -> nnx.Variable:
    shape = var.get_value().shape
    match path[-1]:
      case "embed":
        value = rng.normal(0.0, 1.0, shape)
      case "lm_head":
        value = rng.normal(0.0, 0.4, shape)
      case "q" | "k" | "v" | "o" | "gate" | "up" | "down":  # [L, fan_in, ...]
        value = rng.normal(0.0, 0.3 / np.sqrt(shape[1]), shape)
      case _:  # norms and biases
        value = rng.normal(1.0 if "norm" in path[-1] else 0.0, 0.1, shape)
    return var.replace(jnp.asarray(value, jnp.float32))

  return nnx.merge(graphdef, map_variables(draw, abstract))


def write_word_tokenizer(folder: pathlib.Path, vocab_size: int) -> None:
  """tokenizer.json + tokenizer_config.json for `word_tokenizer` into a HF model folder."""
  backend = word_tokenizer(vocab_size)._backend  # pylint: disable=protected-access
  backend.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": f"t{BOS}", "eos_token": f"t{EOS}", "pad_token": f"t{PAD}"}))


def hf_tiny_checkpoint(folder: pathlib.Path, family: str, seed: int = 0) -> pathlib.Path:
  """Writes a random transformers Llama/Qwen2/Qwen3 checkpoint (float32) with a word tokenizer."""
  import torch
  import transformers

  common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                initializer_range=0.3, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                max_position_embeddings=256)
  match family:
    case "llama":
      cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_theta=10000.0)
      cls = transformers.LlamaForCausalLM
    case "qwen2":
      cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1e6)
      cls = transformers.Qwen2ForCausalLM
    case "qwen3":
      cfg = transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=True,
                                     rope_theta=1e6)
      cls = transformers.Qwen3ForCausalLM
    case _:
      raise ValueError(family)
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():  # random biases too (transformers zero-initialises them)
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.3)
  model.save_pretrained(folder, safe_serialization=True)
  write_word_tokenizer(folder, VOCAB)
  return folder
