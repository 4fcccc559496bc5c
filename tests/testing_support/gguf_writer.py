"""Writes a transformers Llama checkpoint as a GGUF file the way llama.cpp's converter does."""

import pathlib

import numpy as np


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf `permute` of q/k rows (the inverse of what our loader undoes)."""
  rows, cols = w.shape
  return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def byte_level_vocab(extra_merges: int = 20):
  """GPT-2 byte-level alphabet + a few merges + ChatML specials: (tokens, types, merges)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  alphabet = [chr(c) for c in cs]
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("r", "e"), ("o", "n"),
            ("Ġ", "s"), ("e", "r"), ("a", "t")][:extra_merges]
  tokens = specials + alphabet + ["".join(m) for m in merges]
  types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
  return tokens, types, [" ".join(m) for m in merges]


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_gguf_from_hf(hf_folder: pathlib.Path, out: pathlib.Path, quant: str = "F32",
                       arch: str = "llama") -> pathlib.Path:
  import gguf
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
  cfg = model.config
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  tokens, types, merges = byte_level_vocab()
  assert len(tokens) == cfg.vocab_size, (len(tokens), cfg.vocab_size)
  w = gguf.GGUFWriter(str(out), arch)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_chat_template(CHATML)
  qtype = getattr(gguf.GGMLQuantizationType, quant)

  def add(name, arr, quantize=True):
    arr = np.ascontiguousarray(arr, np.float32)
    if quantize and qtype != gguf.GGMLQuantizationType.F32 and arr.ndim == 2:
      w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(name, arr)

  nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
  add("token_embd.weight", sd["model.embed_tokens.weight"])
  add("output_norm.weight", sd["model.norm.weight"], quantize=False)
  if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
    add("output.weight", sd["lm_head.weight"])
  for i in range(cfg.num_hidden_layers):
    p = f"model.layers.{i}."
    add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], quantize=False)
    add(f"blk.{i}.attn_q.weight", permute_rope_rows(sd[p + "self_attn.q_proj.weight"], nh))
    add(f"blk.{i}.attn_k.weight", permute_rope_rows(sd[p + "self_attn.k_proj.weight"], nkv))
    add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
    add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
    add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], quantize=False)
    add(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
    add(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
    add(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return out
