"""Configuration of the decoder-only LMs: Llama 3.x, SmolLM2 (Llama), Qwen2/2.5, Qwen3.

One decoder implementation covers the families; they differ only in the flags below:
  Llama / SmolLM2: optional q/k/v/o bias (`attention_bias`), optional MLP bias, llama3 RoPE scaling.
  Qwen2 / 2.5:     q/k/v bias, no o bias.
  Qwen3:           RMSNorm on q and k per head (before RoPE), explicit head_dim.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Mapping

from darling_jax.errors import InputError


class Family(enum.Enum):
  LLAMA = "llama"
  QWEN2 = "qwen2"
  QWEN3 = "qwen3"


class RopeType(enum.Enum):
  DEFAULT = "default"
  LINEAR = "linear"
  LLAMA3 = "llama3"


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Frequency rescaling of RoPE (transformers' `rope_parameters` minus rope_theta)."""

  rope_type: RopeType = RopeType.DEFAULT
  factor: float = 1.0
  low_freq_factor: float = 1.0  # llama3 only
  high_freq_factor: float = 4.0  # llama3 only
  original_max_position_embeddings: int = 8192  # llama3 only


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shapes and numerics of a decoder; field names follow HF config.json where one exists."""

  family: Family
  vocab_size: int  # V
  hidden_size: int  # D
  intermediate_size: int  # F
  num_layers: int  # L
  num_heads: int  # N
  num_kv_heads: int  # K (GQA: N % K == 0)
  head_dim: int  # H (Qwen3 sets it explicitly; otherwise D // N)
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      if getattr(self, name) <= 0:
        raise InputError(f"config.{name}", f"must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise InputError("config.num_key_value_heads",
                       f"{self.num_kv_heads} does not divide num_attention_heads={self.num_heads}")
    if self.head_dim % 2:
      raise InputError("config.head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")

  @property
  def num_params(self) -> int:
    d, f, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d + (2 * h if self.qk_norm else 0)
    return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + d

  # ---- HF config.json <-> DecoderConfig ---------------------------------------------------------

  @classmethod
  def from_hf(cls, cfg: Mapping[str, Any], source: str = "config.json") -> "DecoderConfig":
    model_type = cfg.get("model_type")
    family = {"llama": Family.LLAMA, "qwen2": Family.QWEN2, "qwen3": Family.QWEN3}.get(model_type)
    if family is None:
      raise InputError(source, f"unknown architecture model_type={model_type!r}; supported: "
                       "llama (Llama 3.x, SmolLM2), qwen2 (Qwen2/2.5), qwen3")
    if cfg.get("use_sliding_window"):
      raise InputError(source, "use_sliding_window=true is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
      raise InputError(source, f"hidden_act={act!r} is not supported (SwiGLU with silu only)")
    try:
      d, n = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
      rope = dict(cfg.get("rope_parameters") or {})
      legacy = cfg.get("rope_scaling") or {}
      rope = {**legacy, **rope}
      theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      try:
        rtype = RopeType(rope_type)
      except ValueError:
        raise InputError(source, f"rope_type={rope_type!r} is not supported "
                         f"({', '.join(t.value for t in RopeType)})") from None
      scaling = RopeScaling(
          rope_type=rtype,
          factor=float(rope.get("factor", 1.0)),
          low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
          high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
          original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
      )
      eos = cfg.get("eos_token_id")
      eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
      vocab = int(cfg["vocab_size"])
      for name, ids in (("eos_token_id", eos), ("bos_token_id", (cfg.get("bos_token_id"),))):
        for i in ids:
          if i is not None and (isinstance(i, bool) or not isinstance(i, int)
                                or not 0 <= i < vocab):
            raise InputError(source, f"{name}={cfg.get(name)!r}: token ids must be integers in "
                             f"[0, vocab_size={vocab})")
      if n <= 0:
        raise InputError(source, f"num_attention_heads must be positive, got {n}")
      attention_bias = bool(cfg.get("attention_bias", False))
      head_dim = cfg.get("head_dim") or d // n
      return cls(
          family=family,
          vocab_size=int(cfg["vocab_size"]),
          hidden_size=d,
          intermediate_size=int(cfg["intermediate_size"]),
          num_layers=int(cfg["num_hidden_layers"]),
          num_heads=n,
          num_kv_heads=int(cfg.get("num_key_value_heads") or n),
          head_dim=int(head_dim),
          rope_theta=theta,
          rope_scaling=scaling,
          rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
          tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
          # Qwen2 hard-codes q/k/v bias (and no o bias); Llama/Qwen3 put it on q/k/v/o together.
          qkv_bias=family is Family.QWEN2 or attention_bias,
          o_bias=family is not Family.QWEN2 and attention_bias,
          mlp_bias=bool(cfg.get("mlp_bias", False)),
          qk_norm=family is Family.QWEN3,
          max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
          bos_token_id=cfg.get("bos_token_id"),
          eos_token_ids=eos,
      )
    except KeyError as e:
      raise InputError(source, f"missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
      if isinstance(e, InputError):
        raise
      raise InputError(source, f"malformed field ({e})") from None

  def to_hf(self) -> dict[str, Any]:
    """config.json content transformers reads back into the same architecture."""
    arch = {Family.LLAMA: "LlamaForCausalLM", Family.QWEN2: "Qwen2ForCausalLM",
            Family.QWEN3: "Qwen3ForCausalLM"}[self.family]
    rope: dict[str, Any] = {"rope_type": self.rope_scaling.rope_type.value, "rope_theta": self.rope_theta}
    if self.rope_scaling.rope_type is not RopeType.DEFAULT:
      rope["factor"] = self.rope_scaling.factor
    if self.rope_scaling.rope_type is RopeType.LLAMA3:
      rope.update(low_freq_factor=self.rope_scaling.low_freq_factor,
                  high_freq_factor=self.rope_scaling.high_freq_factor,
                  original_max_position_embeddings=self.rope_scaling.original_max_position_embeddings)
    out = {
        "architectures": [arch],
        "model_type": self.family.value,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "torch_dtype": "float32",
    }
    if self.family is not Family.QWEN2:
      out["attention_bias"] = self.o_bias
    if self.family is Family.LLAMA:
      out["mlp_bias"] = self.mlp_bias
    if self.bos_token_id is not None:
      out["bos_token_id"] = self.bos_token_id
    if self.eos_token_ids:
      out["eos_token_id"] = (self.eos_token_ids[0] if len(self.eos_token_ids) == 1
                             else list(self.eos_token_ids))
    return out

  # ---- presets (literal numbers from the public config.json of each checkpoint) -------------------

  @classmethod
  def tiny(cls, family: Family = Family.LLAMA, vocab_size: int = 128) -> "DecoderConfig":
    """A 2-layer model for tests: GQA 4/2 heads, head_dim 8."""
    return cls(family=family, vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
               num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6,
               qkv_bias=family is Family.QWEN2, qk_norm=family is Family.QWEN3,
               tie_word_embeddings=True)

  @classmethod
  def demo_policy(cls) -> "DecoderConfig":
    """The demo's pre-trained policy (darling_jax/demo/pretrain.py: 640-token BPE, 2 layers)."""
    return cls(family=Family.LLAMA, vocab_size=640, hidden_size=64, intermediate_size=192,
               num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=256,
               eos_token_ids=(1,))

  @classmethod
  def smollm2_135m(cls) -> "DecoderConfig":
    """HuggingFaceTB/SmolLM2-135M-Instruct."""
    return cls(family=Family.LLAMA, vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192,
               bos_token_id=1, eos_token_ids=(2,))

  @classmethod
  def qwen3_0p6b(cls) -> "DecoderConfig":
    """Qwen/Qwen3-0.6B (the sampler/update benchmarks' shape)."""
    return cls(family=Family.QWEN3, vocab_size=151936, hidden_size=1024, intermediate_size=3072,
               num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True, qk_norm=True,
               max_position_embeddings=40960, eos_token_ids=(151643,))

  @classmethod
  def qwen3_4b_base(cls) -> "DecoderConfig":
    """Qwen/Qwen3-4B-Base (the paper's math policy)."""
    return cls(family=Family.QWEN3, vocab_size=151936, hidden_size=2560, intermediate_size=9728,
               num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True, qk_norm=True,
               max_position_embeddings=32768, eos_token_ids=(151643,))

  @classmethod
  def llama3p1_8b_instruct(cls) -> "DecoderConfig":
    """meta-llama/Llama-3.1-8B-Instruct (the paper's chat policy)."""
    return cls(family=Family.LLAMA, vocab_size=128256, hidden_size=4096, intermediate_size=14336,
               num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
               rope_scaling=RopeScaling(RopeType.LLAMA3, 8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
               tie_word_embeddings=False, max_position_embeddings=131072, bos_token_id=128000,
               eos_token_ids=(128001, 128008, 128009))


def rope_inv_freq(config: DecoderConfig) -> list[float]:
  """Per-pair inverse frequencies [H/2] after the configured scaling (computed in float64 on host)."""
  h = config.head_dim
  inv = [1.0 / (config.rope_theta ** (2 * i / h)) for i in range(h // 2)]
  s = config.rope_scaling
  match s.rope_type:
    case RopeType.DEFAULT:
      return inv
    case RopeType.LINEAR:
      return [f / s.factor for f in inv]
    case RopeType.LLAMA3:
      low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
      high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
      out = []
      for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
          out.append(f)
        elif wavelen > low_wavelen:
          out.append(f / s.factor)
        else:
          smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
              s.high_freq_factor - s.low_freq_factor)
          out.append((1 - smooth) * f / s.factor + smooth * f)
      return out
