"""Tokenizers (HF tokenizer.json, sentencepiece, GGUF vocab) and chat templates with HF semantics."""

from darling_jax.tokenization.chat_template import render_chat_template
from darling_jax.tokenization.tokenizer import Tokenizer, load_hf_tokenizer

__all__ = ["Tokenizer", "load_hf_tokenizer", "render_chat_template"]
