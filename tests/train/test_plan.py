"""Tests `darling_jax/train/plan.py`: its terms against XLA's memory analysis of the compiled
update step (CPU), sharding arithmetic, and the refusal message."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from darling_jax.errors import InputError
from darling_jax.models.decoder_config import DecoderConfig, Family
from darling_jax.models.decoder_init import init_decoder
from darling_jax.rl.state import TrainState, UpdateBatch
from darling_jax.rl.update import UpdateConfig, make_update_step
from darling_jax.sampling.config import SamplerConfig
from darling_jax.train.config import DataConfig, DiversityConfig, PolicyConfig, TrainConfig
from darling_jax.train.plan import check, make_plan

CFG = DecoderConfig(family=Family.QWEN3, vocab_size=2048, hidden_size=256, intermediate_size=768,
                    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, qk_norm=True,
                    tie_word_embeddings=True)
B, G, P, N = 8, 4, 64, 64


def _config(remat=False, **kw):
  return TrainConfig(
      policy=PolicyConfig(init_preset="tiny", tokenizer="smollm2", remat=remat),
      data=DataConfig(batch_size=B, max_prompt_tokens=P),
      sampler=SamplerConfig(max_new_tokens=N, num_samples=G),
      diversity=DiversityConfig(source="ngram"), update=UpdateConfig(logprob_chunk=64), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("remat", [False, True])
def test_terms_match_xla_memory_analysis(remat):
  config = _config(remat)
  plan = make_plan(config, 1, model_cfg=CFG)
  graphdef, params = nnx.split(init_decoder(CFG, remat=remat))
  tx = config.optim.build()
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  batch = UpdateBatch(
      prompt_ids=jnp.zeros((B, P), jnp.int32), prompt_mask=jnp.ones((B, P), bool),
      response_ids=jnp.zeros((B, G, N), jnp.int32), response_mask=jnp.ones((B, G, N), bool),
      old_logprobs=jnp.zeros((B, G, N)), quality=jnp.zeros((B, G)), diversity=jnp.ones((B, G)))
  step = jax.jit(make_update_step(graphdef, tx, config.update), donate_argnums=0)
  analysis = step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  # Params + AdamW moments are exact; the state also holds scalar counters and the RNG key.
  assert 0 <= state_bytes - (plan.terms["params"] + plan.terms["optimizer"]) <= 64
  # Gradients + saved activations against XLA's temporaries: an estimate, within 25%.
  ratio = (plan.terms["gradients"] + plan.terms["activations"]) / analysis.temp_size_in_bytes
  assert 0.75 < ratio < 1.25, ratio


def test_sharding_divides_the_terms():
  one = make_plan(_config(), 1, model_cfg=CFG)
  eight = make_plan(dataclasses.replace(_config(), mesh=dataclasses.replace(
      _config().mesh, data=2, fsdp=2, tensor=2)), 8, model_cfg=CFG)
  # params shard over fsdp x tensor = 4 ways (norm scales replicate; they are tiny)
  assert one.terms["params"] / 4.1 < eight.terms["params"] < one.terms["params"] / 3.5
  assert eight.terms["activations"] < one.terms["activations"] / 3
  assert eight.mesh == {"data": 2, "fsdp": 2, "tensor": 2}


def test_refusal_names_the_largest_term():
  plan = make_plan(_config(), 1, device_memory=1 << 20, model_cfg=CFG)
  with pytest.raises(InputError, match="largest term is activations"):
    check(plan)


def test_paper_recipes_plan_without_weights():
  from darling_jax.train.config import load_config_file
  import pathlib

  configs = pathlib.Path(__file__).resolve().parents[2] / "configs"
  for name in ("qwen3_4b_math.py", "llama31_8b_wildchat.py"):
    path = configs / name
    if not path.exists():
      pytest.skip(f"{name} not written yet")
    plan = make_plan(load_config_file(path), 64)
    assert plan.terms["params"] > 0 and plan.total > 0


def test_packed_layout_holds_the_token_budget_per_micro_batch():
  from darling_jax.train.plan import micro_batch_rows

  def rows(**update):
    cfg = _config()
    return micro_batch_rows(dataclasses.replace(cfg, update=dataclasses.replace(
        cfg.update, **update)), 2)

  assert rows() == (B * G // 2, P + N)  # padded: the micro-batch's sequences, P + N columns
  assert rows(layout="bucketed", length_buckets=(100, 200)) == (B * G // 2, 200)
  # 1000 tokens of 128-token rows: 7 rows, cut to a multiple of the 2 batch ways, 3 per device
  assert rows(layout="packed", max_tokens_per_micro_batch=1000) == (3, 128)
  assert rows(layout="packed") == (B * G // 2, 128)  # no budget: one row per sequence at worst
