"""The DARLING training loop: prompts -> rollouts -> quality -> classifier -> reference -> update.

Every step t draws its randomness from fold_in(seed key, t) and its prompts from a checkpointed
data iterator, so a run killed at any point (kill -9 included) and restarted with the same command
resumes from its last checkpoint and ends exactly as an uninterrupted run. SIGTERM saves a
checkpoint before exit. A non-finite update is never applied and never checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp

from darling_jax.rl.lora import merge_lora
from darling_jax.sampling.text import stop_ids_for
from darling_jax.sharding.mesh import make_mesh
from darling_jax.train import components, programs
from darling_jax.train.checkpoint import Checkpointer, abstract_like
from darling_jax.train.config import DiversitySource, TrainConfig
from darling_jax.train.metrics_writer import MetricsWriter
from darling_jax.train.overrides import to_dict
from darling_jax.train.periodic_eval import EvalSet, run_eval
from darling_jax.train.rollout_stage import Timer, collect


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (then it checkpoints and exits)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class TrainResult:
  steps_done: int
  terminated: bool  # stopped by SIGTERM (checkpoint saved)
  last_metrics: dict[str, Any]
  workdir: pathlib.Path


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
  """Runs (or resumes) the configured run under `config.workdir`."""
  workdir = pathlib.Path(config.workdir)
  mesh = make_mesh(config.mesh)
  model, tokenizer = components.build_policy(config, mesh)
  stop_ids = tuple(dict.fromkeys((*config.sampler.stop_ids, *stop_ids_for(model, tokenizer))))
  graphdef, trainable, frozen = components.trainable_and_frozen(config, model)
  del model
  sampler_cfg = dataclasses.replace(config.sampler, stop_ids=stop_ids)
  diversity = components.build_diversity(config)
  # pi_old sampled at sampler.temperature: the loss must score the same tempered distribution.
  update_cfg = dataclasses.replace(config.update, temperature=config.sampler.temperature)
  if diversity is not None and diversity.source is DiversitySource.CLASSIFIER:
    # The classifier folder carries the threshold it was calibrated at.
    update_cfg = dataclasses.replace(update_cfg, reward=dataclasses.replace(
        update_cfg.reward, threshold=diversity.threshold))
  ref_fn = None
  if update_cfg.kl.beta > 0:
    ref_params = frozen if frozen is not None else jax.tree.map(jnp.copy, trainable)
    ref_prog = programs.build_reference_program(graphdef, update_cfg.temperature,
                                                update_cfg.logprob_chunk, mesh)
    ref_fn = lambda batch: ref_prog(ref_params, batch)  # noqa: E731
  tx = config.optim.build()
  # The same builders `darling-jax compile` lowers (train/programs.py): one code path.
  state, state_sh = programs.init_train_state(tx, trainable, config.seed, mesh)
  frozen_sh = None if frozen is None else programs.shardings_of(frozen)
  update_fn = programs.build_update_program(graphdef, tx, update_cfg, mesh, state_sh, frozen_sh)
  merge = jax.jit(lambda base, adapters: merge_lora(base, adapters, update_cfg.lora))

  data_iter, _ = components.build_data(config, tokenizer, config.data.split)
  eval_set = None
  if config.eval.every > 0 and config.data.eval_split:
    eval_iter, _ = components.build_data(config, tokenizer, config.data.eval_split, shuffle=False,
                                         num_epochs=1, batch_size=config.eval.num_prompts,
                                         dataset=config.data.eval_dataset or None)
    eval_set = EvalSet.build(eval_iter)
  quality_fn = components.build_quality(config)

  ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  start = ckpt.latest_step() or 0
  if start:
    state, data_state, _ = ckpt.restore(start, abstract_like(state))
    data_iter.set_state(data_state)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
  writer = MetricsWriter(workdir, config.steps, start, config.log_every, progress=progress)
  meta = {"config": to_dict(config)}
  metrics: dict[str, Any] = {}

  def evaluate(done: int) -> None:
    policy = state.params if frozen is None else merge(frozen, state.params)
    summary, texts = run_eval(eval_set=eval_set, graphdef=graphdef, params=policy,
                              tokenizer=tokenizer, stop_ids=stop_ids,
                              max_new_tokens=config.sampler.max_new_tokens, config=config.eval,
                              quality_fn=quality_fn, diversity=diversity,
                              key=jax.random.fold_in(jax.random.PRNGKey(config.seed + 7), done),
                              mesh=mesh)
    writer.write_eval(done, "eval", summary)
    if config.eval.save_samples:
      writer.write_samples(done, eval_set.batch.prompts[:config.eval.save_samples],
                           texts[:config.eval.save_samples])

  if eval_set is not None and config.eval.at_start and start == 0:
    evaluate(0)
  nonfinite_run = 0
  terminated = False
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start, config.steps):
        t0 = time.perf_counter()
        timer = Timer()
        prompt_batch = next(data_iter)
        key = jax.random.fold_in(state.rng, step)
        policy = state.params if frozen is None else merge(frozen, state.params)
        data = collect(prompt_batch=prompt_batch, graphdef=graphdef, sample_params=policy,
                       key=key, sampler_cfg=sampler_cfg, tokenizer=tokenizer, stop_ids=stop_ids,
                       quality_fn=quality_fn, diversity=diversity, ref_logprobs_fn=ref_fn,
                       mesh=mesh, timer=timer)
        with timer("update"):
          state, update_metrics = update_fn(state, data.batch, frozen)
          update_metrics = jax.device_get(update_metrics)
        step_s = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in update_metrics.items()}
        metrics.update(data.metrics)
        metrics.update({f"time_{k}_s": v for k, v in timer.seconds.items()})
        metrics["step_s"] = step_s
        n_tokens = metrics["response_tokens"]
        metrics["tokens_per_s"] = n_tokens / step_s
        writer.write(step, metrics)
        if metrics["nonfinite"] > 0:
          nonfinite_run += 1
          if nonfinite_run > config.max_nonfinite_steps:
            last = ckpt.latest_step()
            raise FloatingPointError(
                f"step {step}: non-finite update (loss={metrics['loss']}, grad_norm="
                f"{metrics['grad_norm']}, update_norm={metrics['update_norm']}); it was not "
                "applied and " + ("no checkpoint was written yet" if last is None else
                                  f"the last checkpoint (step {last}) is clean"))
        else:
          nonfinite_run = 0
        done = step + 1
        if eval_set is not None and (done % config.eval.every == 0 or done == config.steps):
          evaluate(done)
        due = config.checkpoint_every and done % config.checkpoint_every == 0
        if due or done == config.steps or sigterm.raised:
          if nonfinite_run == 0:
            ckpt.save(done, state, data_iter.get_state(), meta)
        if sigterm.raised:
          terminated = True
          break
  finally:
    ckpt.close()
    writer.close()
    closer = getattr(quality_fn, "close", None)
    if closer is not None:
      closer()
  steps_done = int(jax.device_get(state.step))
  return TrainResult(steps_done=steps_done, terminated=terminated, last_metrics=metrics,
                     workdir=workdir)
