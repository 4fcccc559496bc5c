"""Decoder LMs, encoders and reward models (Flax NNX) and their checkpoint I/O."""
