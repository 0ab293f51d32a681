"""LLM pretraining recipes: GPT models, optimizers, schedules and scaling rules for training research."""

__version__ = "0.1.0"
