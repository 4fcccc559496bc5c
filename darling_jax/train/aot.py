"""`darling-jax compile`: every program of a training step, compiled by the TPU compiler for a TPU
slice this machine does not have (deviceless ahead-of-time compilation with libtpu).

Inputs are `jax.ShapeDtypeStruct`s with the shardings the trainer's arrays carry, on a mesh built
from the topology's devices by the trainer's own `make_mesh`; the programs come from
train/programs.py, the builders `train` uses. Per-host programs (the classifier's pair scoring and
the reward model, which each host runs on its own groups) are compiled at one host's shapes.

Reported per program and per device: argument, output, aliased (donated) and temporary bytes as
the compiler allocates them, their total against the chip's HBM, and the compiler's FLOP count,
which counts a scan / while body once (not per iteration), so it is not a step's FLOPs. No time
is reported: the compiler's `optimal_seconds` is not a usable estimate.
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any, Callable

from darling_jax.errors import InputError
from darling_jax.train.config import DiversitySource, TrainConfig

INSTALL_HINT = "pip install 'darling_jax[tpu]'"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_GIB = 2**30


@dataclasses.dataclass
class ProgramReport:
  name: str
  note: str = ""
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  flops: float | None = None
  refused: str = ""  # the compiler's HBM refusal, verbatim (first line)
  refused_bytes: int | None = None  # what the refusal says is required
  not_shaped: str = ""  # why the program could not be built (a part's shapes are unknown)
  hbm: int = 0

  @property
  def total(self) -> int:
    if self.refused_bytes is not None:
      return self.refused_bytes
    return self.argument + self.output - self.alias + self.temp

  @property
  def fits(self) -> bool | None:
    if self.not_shaped:
      return None
    return not self.refused and self.total <= self.hbm

  def as_json(self) -> dict[str, Any]:
    out: dict[str, Any] = {"fits": self.fits, "note": self.note}
    if self.not_shaped:
      out["not_shaped"] = self.not_shaped
      return out
    if self.refused:  # the compiler stops at the first over-budget allocation: no breakdown
      out.update(bytes_per_device=self.total, refused=self.refused)
      return out
    out.update(bytes_per_device=self.total, argument_bytes=self.argument,
               output_bytes=self.output, alias_bytes=self.alias, temp_bytes=self.temp,
               flops_scan_bodies_once=self.flops)
    return out


@dataclasses.dataclass
class CompileReport:
  topology: str
  chips: int
  hosts: int
  mesh: dict[str, int]
  hbm: int
  programs: list[ProgramReport]

  @property
  def fits(self) -> bool:
    return all(p.fits is not False for p in self.programs)

  def as_json(self) -> dict[str, Any]:
    return {"topology": self.topology, "chips": self.chips, "hosts": self.hosts,
            "mesh": self.mesh, "hbm_bytes": self.hbm,
            "programs": {p.name: p.as_json() for p in self.programs}, "fits": self.fits}

  def table(self) -> str:
    rows = [f"{self.topology}: {self.chips} chips, {self.hosts} host(s), mesh {self.mesh}, "
            f"HBM {_gib(self.hbm)} per chip (TPU compiler, deviceless; not run on hardware)", "",
            f"  {'program':<11} {'arguments':>11} {'outputs':>11} {'aliased':>11} "
            f"{'temps':>11} {'total':>11} {'of HBM':>7} {'GFLOP*':>10}  fits"]
    for p in self.programs:
      if p.not_shaped:
        rows.append(f"  {p.name:<11} not shaped: {p.not_shaped}")
        continue
      if p.refused:
        rows.append(f"  {p.name:<11} {'':>11} {'':>11} {'':>11} {'':>11} {_gib(p.total):>11} "
                    f"{100 * p.total / p.hbm:>6.0f}% {'':>10}  REFUSED (CompileTimeHbmOom)")
      else:
        flops = "" if p.flops is None else f"{p.flops / 1e9:,.1f}"
        rows.append(f"  {p.name:<11} {_gib(p.argument):>11} {_gib(p.output):>11} "
                    f"{_gib(p.alias):>11} {_gib(p.temp):>11} {_gib(p.total):>11} "
                    f"{100 * p.total / p.hbm:>6.0f}% {flops:>10}  {'yes' if p.fits else 'NO'}")
      if p.note:
        rows.append(f"  {'':<11} ({p.note})")
    rows += ["", "  bytes are per device; total = arguments + outputs - aliased (donated) + temps",
             "  * the compiler's FLOP count: a scan / while body is counted once, not per "
             "iteration"]
    return "\n".join(rows)


def _gib(n: int) -> str:
  return f"{n / _GIB:.2f} GiB" if n >= _GIB // 10 else f"{n / 2**20:.1f} MiB"


def require_libtpu() -> None:
  if importlib.util.find_spec("libtpu") is None:
    raise InputError("libtpu", f"the TPU compiler is not installed; install it with "
                     f"{INSTALL_HINT} (about 480 MB, works on a CPU-only machine)")


def get_topology(name: str):
  """The devices of a TPU slice by name, e.g. v5e:2x2, v5p:4x4x4, v6e:8x8."""
  if not re.fullmatch(r"v[0-9][a-z]*:[0-9]+(x[0-9]+)+", name):
    raise InputError("--topology", f"{name!r} is not a topology name CHIP:AxB[xC] "
                     "(e.g. v5e:2x2, v5p:2x2x2, v6e:4x8)")
  import os

  # Deviceless compilation never opens a chip, so several processes (parallel tests, a compile
  # beside a notebook) may load libtpu at once; without this the second one aborts on its lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies

  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # pylint: disable=broad-except  # the runtime's own error type
    first = str(e).splitlines()[0]
    if "lockfile" in first:
      raise InputError("libtpu", first) from None
    raise InputError("--topology", f"unknown topology {name!r} ({first})") from None


def parse_refusal(message: str) -> tuple[int | None, int | None]:
  """(required, available) bytes from a CompileTimeHbmOom message (units G = GiB)."""
  def num(text):
    m = re.fullmatch(r"([0-9.]+)([KMGT]?)i?B?", text.strip())
    return None if m is None else int(float(m.group(1)) * _UNITS[m.group(2)])

  m = re.search(r"required for [^(]*\(([^)]+)\) exceeds available HBM \(([^)]+)\)", message)
  if m:
    return num(m.group(1)), num(m.group(2))
  m = re.search(r"Used ([0-9.]+[KMGT]?) of ([0-9.]+[KMGT]?) hbm", message)
  if m:
    return num(m.group(1)), num(m.group(2))
  return None, None


def _is_hbm_refusal(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text and ("HbmOom" in text or "hbm" in text.lower())


def chip_hbm(devices) -> int:
  """HBM the compiler allows per chip: it refuses a probe program larger than any chip's HBM and
  names the limit (deviceless devices have no memory_stats)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  mesh = Mesh(np.asarray(devices[:1]), ("x",))
  probe = jax.ShapeDtypeStruct((2**36,), jnp.float32, sharding=NamedSharding(mesh, P()))
  try:
    jax.jit(lambda a: a * 2).lower(probe).compile()
  except Exception as e:  # pylint: disable=broad-except
    _, available = parse_refusal(str(e))
    if available:
      return available
    raise
  raise RuntimeError("a 256 GiB probe program compiled: cannot tell the chip's HBM")


def compile_program(build: Callable[[], Any], name: str, hbm: int) -> ProgramReport:
  """Lowers and compiles one Program (or records why it cannot be built / was refused)."""
  from darling_jax.train.shapes import Shaped

  prog = build()
  if isinstance(prog, Shaped):
    return ProgramReport(name, not_shaped=prog.reason, hbm=hbm)
  rep = ProgramReport(name, note=prog.note, hbm=hbm)
  try:
    compiled = prog.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    if not _is_hbm_refusal(e):
      raise
    rep.refused = next((ln for ln in str(e).splitlines() if "HbmOom" in ln or "hbm" in ln),
                       str(e).splitlines()[0]).strip()
    rep.refused_bytes, _ = parse_refusal(str(e))
    if rep.refused_bytes is None:
      rep.refused_bytes = hbm + 1  # refused without a stated size: at least over HBM
    return rep
  mem = compiled.memory_analysis()
  rep.argument, rep.output = mem.argument_size_in_bytes, mem.output_size_in_bytes
  rep.alias, rep.temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  rep.flops = None if not cost or "flops" not in cost else float(cost["flops"])
  return rep


def compile_step(config: TrainConfig, topology: str,
                 progress: Callable[[str], None] | None = None) -> CompileReport:
  """Compiles sampler, classifier, reward model, reference and update step of `config` for
  `topology` (see the module docstring). Bad input raises InputError before any compilation."""
  require_libtpu()
  from darling_jax.train import shapes

  model_cfg = shapes.policy_config(config)
  topo = get_topology(topology)
  devices = list(topo.devices)
  sizes = config.mesh.resolve(len(devices))  # InputError if the mesh does not divide the chips
  hosts = len({d.process_index for d in devices})
  B, G = config.data.batch_size, config.sampler.num_samples
  if B % hosts:
    raise InputError("data.batch_size", f"{B} prompts do not split over the {hosts} hosts of "
                     f"{topology}")
  config.update.split(B)

  import jax

  from darling_jax.sharding.mesh import AXES, make_mesh
  from darling_jax.rl.layout import Layout
  from darling_jax.train import programs
  from darling_jax.train.effective import effective_config

  mesh = make_mesh(config.mesh, devices=devices)
  local = _host_devices(topology, devices, sum(d.process_index == 0 for d in devices))
  one_device = _host_devices(topology, devices, 1)
  hbm = chip_hbm(devices)
  say = progress or (lambda _msg: None)
  Pn, N = config.data.max_prompt_tokens, config.sampler.max_new_tokens
  b = B // hosts

  graphdef, params = shapes.abstract_policy(config, model_cfg, mesh)
  params = programs.abstract(params, _policy_shardings(params, mesh))
  clf = shapes.abstract_classifier(config)
  # The values `train` derives (stop ids, loss temperature, tau, pi_old source), the same way.
  config = effective_config(
      config, stop_ids=tuple(dict.fromkeys((*config.sampler.stop_ids, *model_cfg.eos_token_ids))),
      classifier_threshold=clf.config.threshold if clf is not None and clf.config is not None
      else None)
  update_cfg = config.update
  trainable, frozen = _trainable_and_frozen(config, params)
  tx = config.optim.build()

  def sampler():
    sampler_cfg = config.sampler
    sample_params = params  # the sampler reads the merged policy (LoRA: base + adapters)
    return programs.sampler_program(graphdef, sample_params, sampler_cfg, B, Pn, 0, mesh)

  def classifier():
    if clf.reason:
      return clf
    from jax.sharding import Mesh
    import numpy as np

    from darling_jax.diversity.pair_scoring import ROWS_AXIS

    scoring = Mesh(np.asarray(local), (ROWS_AXIS,))
    return programs.classifier_program(clf.graphdef, clf.state, clf.config, b, G, scoring)

  def reward():
    rm = shapes.abstract_reward_model(config)
    if rm.reason:
      return rm
    from darling_jax.rewards.reward_model_quality import RewardModelQualityConfig
    from darling_jax.sharding.mesh import single_device_mesh

    # As the trainer loads it (quality.reward_model, no mesh): on one device of each host. The
    # longest sequence: prompt + response + a chat template's tokens (64 assumed).
    return programs.reward_program(rm.graphdef, rm.state, RewardModelQualityConfig(), b * G,
                                   Pn + N + 64, single_device_mesh(one_device[0]))

  ref_params = frozen if frozen is not None else trainable
  use_ref = update_cfg.kl.beta > 0

  def reference():
    fn = programs.build_reference_program(graphdef, update_cfg, mesh)
    batch = _batch(reference=False)
    return programs.Program("reference", fn, (ref_params, batch),
                            note=f"{B * G} sequences of {Pn} + {N} tokens, {layout_note}")

  def _batch(reference: bool):
    # As collect fills it: equivalence probabilities whenever build_diversity loads a classifier
    # (their shape does not depend on which one), n-gram diversity with that source; then packed
    # as BatchPacker does, at the worst case (every sequence full length).
    batch = programs.update_batch_inputs(
        mesh, B, G, Pn, N, equiv=clf is not None,
        diversity=config.diversity.source is DiversitySource.NGRAM, reference=reference)
    return programs.packed_inputs(batch, update_cfg, mesh, model_cfg.max_position_embeddings)

  layout_note = update_cfg.layout.value
  probe = _batch(reference=False)
  if getattr(probe, "src", None) is not None:
    Mp, Up, Rp, Tp = probe.src.shape
    layout_note += f": {Up} micro-batch(es) of {Rp} rows x {Tp} tokens"

  def update():
    state = programs.abstract_train_state(tx, trainable, mesh)
    frozen_sh = None if frozen is None else programs.shardings_of(frozen)
    fn = programs.build_update_program(graphdef, tx, update_cfg, mesh,
                                       programs.shardings_of(state), frozen_sh)
    M, U = update_cfg.split(B)
    note = (f"{M} mini-batch(es) x {U} micro-batch(es) of {B // (M * U) * G} sequences, {Pn} + "
            f"{N} tokens" if update_cfg.layout is Layout.PADDED
            else f"{M} mini-batch(es), {layout_note} (worst case)")
    return programs.Program("update", fn, (state, _batch(reference=use_ref), frozen), note=note)

  builds = [("sampler", sampler)]
  if clf is not None:
    builds.append(("classifier", classifier))
  if any(name == "reward_model" for name, _ in config.quality.functions):
    builds.append(("reward", reward))
  if use_ref:
    builds.append(("reference", reference))
  builds.append(("update", update))
  reports = []
  for name, build in builds:
    say(f"compiling {name} ...")
    reports.append(compile_program(build, name, hbm))
  return CompileReport(topology=topology, chips=len(devices), hosts=hosts,
                       mesh=dict(zip(AXES, sizes)), hbm=hbm, programs=reports)


def _host_devices(topology: str, devices: list, n: int) -> list:
  """`n` chips of the same kind for a per-host program: the slice itself when it has n chips,
  else a slice of n chips of its own (the TPU compiler refuses device assignments that are part
  of a larger v5e / v6e slice: "limited ICI routing")."""
  if n == len(devices):
    return devices
  chip = topology.split(":")[0]
  shape = {1: "1x1", 2: "1x2", 4: "2x2", 8: "2x4"}.get(n)
  if shape is None:
    return devices[:n]
  return list(get_topology(f"{chip}:{shape}").devices)


def _policy_shardings(params, mesh):
  from darling_jax.sharding.rules import DEFAULT_RULES, state_shardings

  # As build_policy places a loaded / initialised policy.
  return state_shardings(params, mesh, DEFAULT_RULES)


def _trainable_and_frozen(config: TrainConfig, params):
  """(trainable, frozen) as components.trainable_and_frozen makes them, abstractly."""
  lora = config.update.lora
  if not lora.enabled:
    return params, None
  import jax

  from darling_jax.rl.lora import init_lora

  init = jax.jit(lambda p, k: init_lora(p, lora, k))
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = init.lower(params, key).compile()
  adapters = jax.eval_shape(init, params, key)
  from darling_jax.train.programs import abstract

  # The adapters' layout is what the trainer's jitted init_lora gives them on this mesh.
  return abstract(adapters, compiled.output_shardings), params


def check(report: CompileReport) -> None:
  """InputError naming the first program that does not fit."""
  for p in report.programs:
    if p.fits is False:
      how = "refused by the compiler (CompileTimeHbmOom)" if p.refused else "needs"
      raise InputError("compile", f"{p.name}: {how} {_gib(p.total)} ({p.total} bytes) per device "
                       f"on {report.topology}, whose chips have {_gib(report.hbm)} "
                       f"({report.hbm} bytes) of HBM. Shard more (mesh.fsdp / mesh.tensor), cut "
                       "data.batch_size, sampler.max_new_tokens or update.micro_batch_prompts, "
                       "or enable policy.remat")


__all__ = ["CompileReport", "ProgramReport", "check", "compile_step", "parse_refusal"]
