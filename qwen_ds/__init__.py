"""qwen-ds: memory estimates, plans, DeepSpeed configs and launches for Qwen-family models."""

__version__ = "0.1.0"
