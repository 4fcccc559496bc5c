"""Pre-trains the demo's starting policy and writes it as a Hugging Face model folder.

The policy is a 2-layer Llama-architecture decoder (0.14M parameters) with a byte-level BPE tokenizer
trained on the task's text. It is fitted (answer tokens only, as in SFT) to a skewed mixture: for
each request, fitting activities with Zipf popularity plus answers that fit *other* requests (see
activities.VALID_SHARE). The result behaves like a small instruct model on this task: it answers in
the right format, often correctly, and favours a few popular answers, which is where quality-only RL
tends to collapse.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from darling_jax.demo.activities import REQUESTS
from darling_jax.demo.task import answer_texts, sample_answer
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.decoder_init import init_decoder
from darling_jax.models.hf_decoder import export_hf
from darling_jax.tokenization.tokenizer import Tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ("<|pad|>", "<|end|>", "<|user|>", "<|assistant|>")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  vocab_size: int = 640  # BPE merges learned on the task's text
  steps: int = 600  # ~1.5 min on 2 CPU cores; the answer loss has flattened by then
  batch_size: int = 32
  learning_rate: float = 1e-2
  warmup_steps: int = 50
  seq_len: int = 40  # prompt + answer + end token, right-padded
  seed: int = 0


def train_tokenizer(config: PretrainConfig) -> Tokenizer:
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  texts = [ask for asks, _ in REQUESTS.values() for ask in asks] + sorted(answer_texts())
  backend.train_from_iterator(texts, trainer=trainer)
  return Tokenizer(backend, bos_token=None, eos_tokens=["<|end|>"], pad_token="<|pad|>",
                   chat_template=CHAT_TEMPLATE, source="demo tokenizer")


def policy_config(tokenizer: Tokenizer) -> DecoderConfig:
  return DecoderConfig(family=Family.LLAMA, vocab_size=tokenizer.vocab_size, hidden_size=64,
                       intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, max_position_embeddings=256,
                       eos_token_ids=tokenizer.eos_token_ids)


class _Encodings:
  """Token ids of every training prompt and answer, computed once."""

  def __init__(self, tokenizer: Tokenizer):
    self.asks = [(rid, tokenizer.apply_chat_template([{"role": "user", "content": ask}],
                                                     tokenize=True))
                 for rid, (asks, _) in REQUESTS.items() for ask in asks]
    self.answers = {a: tokenizer.encode(a) + [tokenizer.eos_token_id] for a in answer_texts()}


def _examples(enc: _Encodings, tokenizer: Tokenizer, config: PretrainConfig,
              rng: np.random.Generator):
  """A batch of (ids [S, T], loss mask [S, T]) for next-token prediction of answers."""
  ids = np.full((config.batch_size, config.seq_len), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((config.batch_size, config.seq_len), np.float32)
  for s in range(config.batch_size):
    rid, prompt = enc.asks[rng.integers(len(enc.asks))]
    answer = enc.answers[sample_answer(rid, rng)]
    seq = (prompt + answer)[: config.seq_len]
    ids[s, :len(seq)] = seq
    mask[s, len(prompt):len(seq)] = 1.0  # predict answer tokens (and the end token) only
  return ids, mask


def pretrain(out: pathlib.Path, config: PretrainConfig = PretrainConfig(),
             log=print) -> pathlib.Path:
  """Trains the tokenizer and policy, writes a HF folder to `out` (atomically), returns it."""
  start = time.perf_counter()
  tokenizer = train_tokenizer(config)
  model = init_decoder(policy_config(tokenizer), config.seed)
  graphdef, params = nnx.split(model)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                config.steps, config.learning_rate * 0.05)
  tx = optax.adamw(schedule, weight_decay=0.01)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, ids, mask):
    def loss_fn(p):
      m = nnx.merge(graphdef, p)
      logits = m(ids[:, :-1], attention_mask=(ids[:, :-1] != tokenizer.pad_token_id))
      logp = jax.nn.log_softmax(logits, axis=-1)
      nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
      return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  enc = _Encodings(tokenizer)
  for i in range(config.steps):
    ids, mask = _examples(enc, tokenizer, config, rng)
    params, opt_state, loss = step(params, opt_state, ids, mask)
    if i % 100 == 0 or i == config.steps - 1:
      log(f"pretrain step {i}: answer loss {float(loss):.3f} ({time.perf_counter() - start:.0f} s)")
  export_hf(nnx.merge(graphdef, params), out, tokenizer)
  return out
