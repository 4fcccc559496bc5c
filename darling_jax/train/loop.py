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
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

from darling_jax.errors import InputError
from darling_jax.rl.lora import merge_lora
from darling_jax.rl.packing import BatchPacker
from darling_jax.sampling.text import stop_ids_for
from darling_jax.sharding.mesh import make_mesh
from darling_jax.train import components, programs
from darling_jax.train.checkpoint import Checkpointer, abstract_like
from darling_jax.train.config import DiversitySource, TrainConfig
from darling_jax.train.effective import effective_config
from darling_jax.train.metrics_writer import MetricsWriter
from darling_jax.train.overrides import to_dict
from darling_jax.train.periodic_eval import EvalSet, run_eval
from darling_jax.train.preemption import Preemption
from darling_jax.train.resume_check import check_resume
from darling_jax.train.rollout_stage import Timer, collect
from darling_jax.train.workdir_lock import WorkdirLock


@dataclasses.dataclass
class TrainResult:
  steps_done: int
  terminated: bool  # stopped by SIGTERM (checkpoint saved)
  last_metrics: dict[str, Any]
  workdir: pathlib.Path


def train(config: TrainConfig, *, progress: bool = True,
          allow_config_change: bool = False) -> TrainResult:
  """Runs (or resumes) the configured run under `config.workdir`, holding its workdir lock.

  A resume whose config changes what the checkpoint means is refused (resume_check.py) unless
  `allow_config_change`.
  """
  workdir = pathlib.Path(config.workdir)
  if not str(config.workdir).strip():
    raise InputError("workdir", "is empty; give the run a folder (workdir=runs/NAME)")
  if jax.process_index() != 0:
    return _train(config, workdir, progress, allow_config_change)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InputError("workdir", f"{workdir} cannot be created ({e.strerror})") from None
  if not workdir.is_dir():
    raise InputError("workdir", f"{workdir} is not a folder")
  with WorkdirLock(workdir):
    return _train(config, workdir, progress, allow_config_change)


def _train(config: TrainConfig, workdir: pathlib.Path, progress: bool,
           allow_config_change: bool) -> TrainResult:
  mesh = make_mesh(config.mesh)
  model, tokenizer = components.build_policy(config, mesh)
  stop_ids = tuple(dict.fromkeys((*config.sampler.stop_ids, *stop_ids_for(model, tokenizer))))
  graphdef, trainable, frozen = components.trainable_and_frozen(config, model)
  model_cfg = model.config
  del model
  diversity = components.build_diversity(config)
  learned = diversity is not None and diversity.source is DiversitySource.CLASSIFIER
  # From here on `config` is what runs, and what config.json and the checkpoints record.
  config = effective_config(config, stop_ids=stop_ids,
                            classifier_threshold=diversity.threshold if learned else None)
  if learned:
    diversity = dataclasses.replace(diversity, threshold=config.update.reward.threshold)
  sampler_cfg, update_cfg = config.sampler, config.update
  # log pi at the sampling temperature through the update's layout and micro-batches: the KL
  # reference's, and pi_old when it is recomputed.
  logprobs_fn = programs.build_reference_program(graphdef, update_cfg, mesh)
  packer = BatchPacker(update_cfg, mesh, max_positions=model_cfg.max_position_embeddings)
  ref_params = None
  if update_cfg.kl.beta > 0:
    ref_params = frozen if frozen is not None else jax.tree.map(jnp.copy, trainable)
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
    eval_set = EvalSet.build(eval_iter, config.eval.num_prompts)
  quality_fn = components.build_quality(config)

  ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(abstract_like(state))
  start = 0
  if restored is not None:
    check_resume(restored.meta.get("config"), config, restored.step, allow_config_change)
    state, start = restored.state, restored.step
    data_iter.set_state(restored.data)
    for line in restored.skipped:
      print(f"darling-jax: {line}; resuming from step {start}", file=sys.stderr)
    if start >= config.steps:
      print(f"darling-jax: {workdir} is at step {start} >= steps={config.steps}: nothing to do "
            "(raise steps=... to train on)", file=sys.stderr)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    with open(workdir / "config_history.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps({"start_step": start, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                          "config": to_dict(config)}) + "\n")
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
    with Preemption(ckpt.reached_preemption) as preemption:
      for step in range(start, config.steps):
        if config.profile_steps and step == config.profile_steps[0]:
          jax.profiler.start_trace(str(workdir / "profile"))
        t0 = time.perf_counter()
        timer = Timer()
        prompt_batch = next(data_iter)
        key = jax.random.fold_in(state.rng, step)
        policy = state.params if frozen is None else merge(frozen, state.params)
        data = collect(prompt_batch=prompt_batch, graphdef=graphdef, sample_params=policy,
                       key=key, sampler_cfg=sampler_cfg, tokenizer=tokenizer, stop_ids=stop_ids,
                       quality_fn=quality_fn, diversity=diversity, ref_logprobs_fn=None,
                       mesh=mesh, timer=timer)
        with timer("pack"):
          packed, layout_facts = packer(data.batch, lengths=data.lengths)
        if update_cfg.recompute_old_logprobs:
          with timer("old_logprobs"):  # the sampler's are of the filtered distribution
            packed = packed.replace(batch=packed.batch.replace(
                old_logprobs=logprobs_fn(policy, packed)))
        if ref_params is not None:
          with timer("reference"):
            packed = packed.replace(batch=packed.batch.replace(
                ref_logprobs=logprobs_fn(ref_params, packed)))
            jax.block_until_ready(packed.batch.ref_logprobs)
        with timer("update"):
          state, update_metrics = update_fn(state, packed, frozen)
          update_metrics = jax.device_get(update_metrics)
        step_s = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in update_metrics.items()}
        metrics.update(data.metrics)
        metrics.update({f"layout_{k}": float(v) for k, v in layout_facts.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        metrics.update({f"time_{k}_s": v for k, v in timer.seconds.items()})
        metrics["step_s"] = step_s
        n_tokens = metrics["response_tokens"]
        metrics["tokens_per_s"] = n_tokens / step_s
        writer.write(step, metrics)
        if config.profile_steps and step + 1 == config.profile_steps[1]:
          jax.profiler.stop_trace()  # TensorBoard's profile plugin / Perfetto read workdir/profile
        if metrics["nonfinite"] > 0:
          nonfinite_run += 1
          if nonfinite_run > config.max_nonfinite_steps:
            last = ckpt.latest_step()
            raise FloatingPointError(
                f"step {step}: non-finite update (loss={metrics['loss']}, grad_norm="
                f"{metrics['grad_norm']}, update_norm={metrics['update_norm']}); it was not "
                "applied and " + ("no checkpoint was written yet" if last is None else
                                  f"the last checkpoint (step {last}) holds the finite state "
                                  "saved then (its digest is verified on restore)"))
        else:
          nonfinite_run = 0
        done = step + 1
        if eval_set is not None and (done % config.eval.every == 0 or done == config.steps):
          evaluate(done)
        due = config.checkpoint_every and done % config.checkpoint_every == 0
        preempted = preemption.due(done)  # the same step on every host
        if due or done == config.steps or preempted:
          if nonfinite_run == 0:
            ckpt.save(done, state, data_iter.get_state(), meta)
        if preempted:
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
