"""GPT models: `GPT`/`GPTConfig` (a transformers PreTrainedModel) and export to a plain Llama directory."""
from .gpt import GPT, GPTConfig, flops_per_token
from .export import save_final, to_llama

__all__ = ["GPT", "GPTConfig", "flops_per_token", "save_final", "to_llama"]
