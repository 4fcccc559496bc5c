"""`darling-jax plan`: per-device memory of a run on its mesh, before anything is allocated.

Axis letters: L layers, D width, F MLP width, N/K query/KV heads, H head dim, V vocab, S sequences
(packed layout: rows) per micro-batch on a device, T = prompt + response tokens (bucketed /
packed: the row length), tp = tensor-parallel ways; S and T come from `micro_batch_rows`.

Terms (bytes on the busiest device):
  params       every policy tensor / the mesh axes its logical names shard it over (DEFAULT_RULES)
  optimizer    AdamW's two moments, sharded like the params (LoRA: of the adapters only)
  gradients    one accumulation buffer, sharded like the params
  reference    a second copy of the params when beta > 0 (none with LoRA: the base is the ref)
  kv_cache     the sampler's cache + decode buffers (sampling/memory.py; SAMPLING_RULES)
  sampler_weights  the policy in the sampler's layout (SAMPLING_RULES: tensor-parallel, no FSDP)
  classifier   its weights in float32: an encoder's replicated (CLASSIFIER_RULES); a decoder
               classifier's (Qwen3/Llama *ForSequenceClassification) FSDP-sharded like the policy
               over every device of the plan (one host: the scorer shards over local devices)
  activations  the update's saved activations per micro-batch:
               L * S * T * (A_D * D + A_F * F / tp) * act_bytes + L * attention
               (with remat: L * S * T * D * act_bytes + one layer's worth), plus the LM-head chunk
               S * chunk * (V / tp) * 4 * 3; attention = 3 * S * (N / tp) * T^2 * 4 (einsum) or
               S * (N / tp) * T * (2 H + 2) * 4 (fused); S, T per update.layout
               (micro_batch_rows)
A_D = 15 and A_F = 4 count the [S, T, *] tensors one block keeps for its backward pass: the
residual input, both RMSNorms' float32 upcast, normalised and scaled outputs (6), q/k/v (2: GQA
k and v are half-width), q and k after RoPE in float32 (2), the attention output, o-projection
and residual sum (3), the down projection (1); gate, up, silu(gate) and their product (4 x F);
and, with policy.attention=einsum, three float32 [N, T, T] score tensors (scores, masked scores,
probabilities); the fused backends (blockwise, splash, cuDNN) keep per query and head only a
float32 output accumulator and dq and two softmax statistics. Checked against
XLA's own memory analysis of the compiled step in tests/train/test_plan.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


from darling_jax.errors import InputError
from darling_jax.models.decoder_config import DecoderConfig
from darling_jax.sampling.memory import shard_count
from darling_jax.sharding.mesh import AXES
from darling_jax.sharding.rules import DEFAULT_RULES, SAMPLING_RULES
from darling_jax.train.config import DiversitySource, TrainConfig

A_D, A_F = 15, 4
_BYTES = {"float32": 4, "bfloat16": 2}
# Published parameter counts of classifier backbones named instead of a local folder.
KNOWN_CLASSIFIERS = {"modernbert-base": 149_606_402, "deberta-v3-large": 435_063_810,
                     "qwen3-embedding-4b": 4_021_774_336, "minilm": 22_713_216}


@dataclasses.dataclass(frozen=True)
class PlanMesh:
  """A mesh's axis sizes only: plans are made for device counts this machine need not have."""

  shape: dict[str, int]


@dataclasses.dataclass
class Plan:
  mesh: dict[str, int]
  terms: dict[str, int]  # bytes per device
  device_memory: int | None

  @property
  def total(self) -> int:
    return sum(self.terms.values())

  @property
  def fits(self) -> bool:
    return self.device_memory is None or self.total <= self.device_memory

  def largest(self) -> tuple[str, int]:
    return max(self.terms.items(), key=lambda kv: kv[1])

  def table(self) -> str:
    rows = [f"mesh {self.mesh} ({math.prod(self.mesh.values())} devices)", ""]
    rows += [f"  {k:<12} {_gib(v):>10}" for k, v in self.terms.items()]
    rows += [f"  {'total':<12} {_gib(self.total):>10}"]
    if self.device_memory is not None:
      rows += [f"  {'device':<12} {_gib(self.device_memory):>10}"
               f"   ({100 * self.total / self.device_memory:.0f}% used)"]
    return "\n".join(rows)


def _gib(n: int) -> str:
  return f"{n / 2**30:.3f} GiB"


def policy_shapes(cfg: DecoderConfig) -> list[tuple[tuple[int, ...], tuple[str | None, ...]]]:
  """(shape, logical names) of every Decoder parameter, without building it."""
  import jax
  from flax import nnx

  from darling_jax.models.decoder import Decoder

  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  out = []
  for v in jax.tree.leaves(nnx.state(abstract), is_leaf=lambda x: isinstance(x, nnx.Variable)):
    meta = v.get_metadata()
    out.append((tuple(v.get_value().shape), tuple(meta.get("out_sharding") or ())))
  return out


def resolve_policy_config(config: TrainConfig) -> DecoderConfig:
  """The policy's shapes from its checkpoint's metadata, a preset, or policy.architecture."""
  import pathlib

  pc = config.policy
  if pc.architecture:
    preset = getattr(DecoderConfig, pc.architecture, None)
    if preset is None or not callable(preset):
      raise InputError("policy.architecture", f"unknown DecoderConfig preset {pc.architecture!r}")
    return preset()
  from darling_jax.train import components

  if pc.init_preset:
    tok = components.load_tokenizer(pc.tokenizer)
    return components.PRESETS[pc.init_preset](tok.vocab_size)
  path = components.resolve_model_path(pc.path)
  if path.suffix == ".gguf":
    from darling_jax.models.gguf_decoder import _open, gguf_config

    return gguf_config(_open(path), path)
  if not pathlib.Path(path).exists():
    raise InputError("policy.path", f"{path} is not on this machine; set policy.architecture to a "
                     "DecoderConfig preset (e.g. qwen3_4b_base) to plan without the weights")
  from darling_jax.models.hf_decoder import read_config

  return read_config(pathlib.Path(path))


def classifier_params(config: TrainConfig) -> int:
  dc = config.diversity
  if dc.source is not DiversitySource.CLASSIFIER:
    return 0
  if dc.classifier_params:
    return dc.classifier_params
  name = dc.classifier.lower()
  if name in KNOWN_CLASSIFIERS:
    return KNOWN_CLASSIFIERS[name]
  import pathlib

  if name == "default":
    return KNOWN_CLASSIFIERS["minilm"]
  hf = _classifier_hf(pathlib.Path(dc.classifier))
  if hf is not None:
    from darling_jax.models.safetensors_io import SafetensorsFolder

    st = SafetensorsFolder(hf)
    return sum(math.prod(st.shape_of(k)) for k in st)
  raise InputError("diversity.classifier", f"{dc.classifier!r}: not a classifier folder nor one "
                   f"of {sorted(KNOWN_CLASSIFIERS)}")


def _classifier_hf(folder) -> Any:
  """The HF weights folder of a classifier: its hf/ export, or the folder itself (a plain HF
  *ForSequenceClassification folder); None if neither holds safetensors."""
  for hf in (folder / "hf", folder):
    if (hf / "model.safetensors").exists() or (hf / "model.safetensors.index.json").exists():
      return hf
  return None


def classifier_is_sharded(config: TrainConfig) -> bool:
  """A decoder classifier (weights FSDP-sharded, not replicated); known names by their family."""
  dc = config.diversity
  name = dc.classifier.lower()
  if name.startswith("qwen3-embedding"):
    return True
  import pathlib

  hf = _classifier_hf(pathlib.Path(dc.classifier))
  if hf is None or not (hf / "config.json").exists():
    return False
  from darling_jax.models import encoders

  return encoders.is_decoder_family(encoders.read_hf_config(hf).get("model_type"))


def make_plan(config: TrainConfig, num_devices: int, device_memory: int | None = None,
              model_cfg: DecoderConfig | None = None) -> Plan:
  """Per-device bytes of `config` on `num_devices` devices (see module docstring)."""
  sizes = config.mesh.resolve(num_devices)
  mesh = PlanMesh(dict(zip(AXES, sizes)))
  cfg = model_cfg or resolve_policy_config(config)
  pb = _BYTES[config.policy.param_dtype]
  ab = _BYTES[config.policy.dtype]
  shapes = policy_shapes(cfg)
  params = sum(math.prod(s) * pb // shard_count(s, n, mesh, DEFAULT_RULES) for s, n in shapes)
  lora = config.update.lora
  if lora.enabled:
    trainable = sum(4 * lora.rank * (s[0] * (s[1] + math.prod(s[2:])))
                    for (s, n) in shapes if len(s) >= 3 and n[:1] == ("layers",)) // max(
                        1, mesh.shape["tensor"])
  else:
    trainable = params * 4 // pb  # optimizer moments and gradients in float32 for bf16 params
  terms: dict[str, int] = {"params": params, "optimizer": 2 * trainable, "gradients": trainable}
  if config.update.kl.beta > 0 and not lora.enabled:
    terms["reference"] = params
  # sampler
  from darling_jax.sampling.memory import estimate_bytes

  est = estimate_bytes(cfg, config.sampler, config.data.batch_size, config.data.max_prompt_tokens,
                       mesh=mesh, rules=SAMPLING_RULES)
  terms["kv_cache"] = est.per_device
  # The sampler reads the weights in its own layout (SAMPLING_RULES: no FSDP), a second copy of
  # the policy for as long as rollouts run (the TPU compiler's temporaries show it).
  terms["sampler_weights"] = sum(math.prod(s) * pb // shard_count(s, n, mesh, SAMPLING_RULES)
                                 for s, n in shapes)
  clf_bytes = classifier_params(config) * 4
  if clf_bytes and classifier_is_sharded(config):
    clf_bytes = -(-clf_bytes // math.prod(mesh.shape.values()))
  terms["classifier"] = clf_bytes
  # update activations
  S, T = micro_batch_rows(config, mesh.shape["data"] * mesh.shape["fsdp"])
  tp = mesh.shape["tensor"]
  L, D, F, N, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, \
      cfg.vocab_size
  heads = max(1, N // tp)
  if config.policy.attention == "einsum":
    attn = 3 * S * heads * T * T * 4  # scores, masked scores, probabilities: [N, T, T] float32
  else:  # fused (blockwise / splash / cuDNN) keeps no [T, T]: per query and head, a float32
    # output accumulator and dq (H wide each) and the softmax max and log-sum-exp
    attn = S * heads * T * (2 * cfg.head_dim + 2) * 4
  layer = S * T * (A_D * D + A_F * F // tp) * ab + attn
  saved = L * S * T * D * ab + layer if config.policy.remat else L * layer
  chunk = min(config.update.logprob_chunk, config.sampler.max_new_tokens)
  terms["activations"] = saved + S * chunk * max(1, V // tp) * 4 * 3
  return Plan(mesh=mesh.shape, terms=terms, device_memory=device_memory)


def micro_batch_rows(config: TrainConfig, batch_ways: int) -> tuple[int, int]:
  """(S, T) of the activations term: rows one device holds per update micro-batch, row length.

  padded: S = a micro-batch's sequences / batch_ways, T = max_prompt_tokens + max_new_tokens.
  bucketed / packed (update.layout): rows are T = that sum rounded up to a length bucket long,
  the worst case (every sequence full length); packed with update.max_tokens_per_micro_batch
  holds budget // T rows (a multiple of batch_ways), without a budget one row per sequence
  (rounded up to a row-count bucket, as rl/packing.py does).
  """
  from darling_jax.rl.layout import COUNT_BUCKETS, Layout, bucket_up

  uc = config.update
  M, U = uc.split(config.data.batch_size)
  per_mb = config.data.batch_size // M * config.sampler.num_samples
  S_global = per_mb // U
  T = config.data.max_prompt_tokens + config.sampler.max_new_tokens
  if uc.layout is not Layout.PADDED:
    T = bucket_up(T, uc.buckets())
  if uc.layout is Layout.PACKED:
    budget = uc.max_tokens_per_micro_batch
    S_global = (budget // T // batch_ways * batch_ways if budget else
                batch_ways * bucket_up(math.ceil(per_mb / batch_ways), COUNT_BUCKETS))
  return max(1, math.ceil(S_global / batch_ways)), T


def detect_device_memory() -> int | None:
  """bytes_limit of the first accelerator, or None on CPU (host RAM is not a per-device budget)."""
  import jax

  stats = jax.devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return None


def check(plan: Plan) -> None:
  if plan.fits:
    return
  name, size = plan.largest()
  raise InputError("plan", f"needs {_gib(plan.total)} per device but a device has "
                   f"{_gib(plan.device_memory)}; the largest term is {name} ({_gib(size)}). "
                   "Shard more (mesh.fsdp / mesh.tensor), cut data.batch_size or "
                   "sampler.max_new_tokens, enable policy.remat, or use LoRA (update.lora.rank)")


def as_json(plan: Plan) -> dict[str, Any]:
  return {"mesh": plan.mesh, "bytes_per_device": plan.terms, "total": plan.total,
          "device_memory": plan.device_memory, "fits": plan.fits}
