"""The demo task, its policy pre-training, and the DARLING vs GRPO experiment."""
