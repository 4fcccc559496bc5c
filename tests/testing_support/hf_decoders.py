"""Tiny random HF decoder checkpoints written by transformers (the parity reference)."""

import pathlib


# name -> (transformers config class name, kwargs). Together they cover the flags of DecoderConfig:
# tied/untied, q/k/v(/o) bias, MLP bias, q/k norm, GQA ratios, llama3 / linear RoPE scaling.
VARIANTS = {
    "llama_llama3_rope_untied": ("LlamaConfig", dict(
        num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "llama_tied_bias": ("LlamaConfig", dict(
        num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "llama_linear_rope_mqa": ("LlamaConfig", dict(
        num_key_value_heads=1, tie_word_embeddings=False, rope_scaling={"rope_type": "linear",
                                                                        "factor": 2.0})),
    "qwen2_bias_untied": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2_tied": ("Qwen2Config", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen3_tied": ("Qwen3Config", dict(num_key_value_heads=2, tie_word_embeddings=True,
                                       head_dim=24)),
    "qwen3_untied_attn_bias": ("Qwen3Config", dict(num_key_value_heads=4,
                                                   tie_word_embeddings=False, attention_bias=True)),
}

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def write_tiny_decoder(folder: pathlib.Path, variant: str, seed: int = 0) -> pathlib.Path:
  import torch
  import transformers

  cls_name, kwargs = VARIANTS[variant]
  config = getattr(transformers, cls_name)(**{**BASE, **kwargs})
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  # Random init keeps biases/norms at 0/1; perturb them so those code paths are really checked.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  return folder
