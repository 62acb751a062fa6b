"""Models and tokenizers: the built-in tiny pair and loading of real HF checkpoints."""

from __future__ import annotations

from rayrl.models.loading import load_model_and_tokenizer, save_model_dir
from rayrl.models.tiny import build_tiny_model, build_tokenizer

__all__ = ["build_tiny_model", "build_tokenizer", "load_model_and_tokenizer", "save_model_dir"]
