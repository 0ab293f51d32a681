"""Export a trained GPT to a standard transformers `LlamaForCausalLM` directory.

Our blocks are Llama's, so the weights map one to one; forward multipliers (parametrization.py) are folded into
weights: embedding multiplier into the input embedding, the readout multiplier (muP: logit_multiplier / width
multiplier) into the head (untying when needed), a non-default attention scale s into q_proj (scores q.k*s ==
(q*s*sqrt(d_head)).k/sqrt(d_head); RoPE is linear), CompleteP's residual-branch multiplier into o_proj and down_proj
(each branch ends in that linear map).
"""
from __future__ import annotations

import math

from transformers import LlamaConfig, LlamaForCausalLM

from . import parametrization
from .gpt import GPT


def to_llama(model: GPT, state_dict: dict | None = None) -> LlamaForCausalLM:
    c = model.config
    sd = {k: v.detach().float().clone() for k, v in (state_dict or model.state_dict()).items()}
    readout = parametrization.readout_multiplier(c)
    tie = c.tie_embeddings and c.embed_multiplier == 1.0 and readout == 1.0
    emb = sd["model.embed_tokens.weight"]
    head = emb.clone() if c.tie_embeddings else sd["lm_head.weight"]
    sd["model.embed_tokens.weight"] = emb * c.embed_multiplier
    sd["lm_head.weight"] = head * readout
    residual = parametrization.residual_multiplier(c)
    if residual != 1.0:
        for k in sd:
            if k.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
                sd[k] = sd[k] * residual
    q_fold = parametrization.attn_scale(c) * math.sqrt(c.head_dim)
    if q_fold != 1.0:
        for k in sd:
            if k.endswith("self_attn.q_proj.weight"):
                sd[k] = sd[k] * q_fold
    lcfg = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attention_bias=False, mlp_bias=False,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, torch_dtype="float32")
    llama = LlamaForCausalLM(lcfg)
    if tie:
        sd.pop("lm_head.weight")
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (tie and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    if tie:
        llama.tie_weights()
    return llama


def save_final(model: GPT, out_dir: str, tokenizer=None, state_dict=None) -> None:
    """Write `out_dir` as a plain Llama model directory (safetensors) plus the tokenizer."""
    llama = to_llama(model, state_dict)
    llama.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
