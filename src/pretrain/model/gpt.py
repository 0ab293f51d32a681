"""A GPT family as a transformers `PreTrainedModel`: pre-norm blocks (RMSNorm), rotary position embeddings,
SwiGLU MLP, grouped-query attention through `scaled_dot_product_attention`, optional weight tying.

The layout and numerics match transformers' Llama exactly, so `export.py` turns a trained model into a
`LlamaForCausalLM` (forward multipliers folded into the weights) that any Hugging Face tool loads.
Initialization and multipliers live in `parametrization.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from . import parametrization


class GPTConfig(PretrainedConfig):
    model_type = "pretrain_gpt"

    def __init__(self, vocab_size=4096, d_model=128, n_layer=4, n_head=4, n_kv_head=None, d_ff=None,
                 max_seq_len=256, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, init_std=0.02,
                 attn_scale=None, embed_multiplier=1.0, logit_multiplier=1.0, bos_token_id=None, eos_token_id=None,
                 activation_checkpointing=False, parametrization="sp", base_width=None, base_head_dim=None,
                 base_d_ff=None, base_depth=None, depth_alpha=1.0, **kwargs):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        # SwiGLU width: 8/3 * d rounded up to a multiple of 64 (keeps parameters ~ a 4d GELU MLP)
        self.d_ff = d_ff or 64 * ((int(8 * d_model / 3) + 63) // 64)
        self.max_seq_len = max_seq_len
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.tie_embeddings = tie_embeddings
        self.init_std = init_std
        self.attn_scale = attn_scale
        self.embed_multiplier = embed_multiplier
        self.logit_multiplier = logit_multiplier
        # sp | mup | completep and the proxy's shape (parametrization.py: inits, multipliers, per-parameter lr)
        self.parametrization = parametrization
        self.base_width = base_width
        self.base_head_dim = base_head_dim
        self.base_d_ff = base_d_ff
        self.base_depth = base_depth
        self.depth_alpha = depth_alpha
        # recompute each Block in backward (training only); a runtime choice: numerics and export are unchanged
        self.activation_checkpointing = activation_checkpointing
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=tie_embeddings,
                         **kwargs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def block_params(self) -> int:
        """Parameters of one Block: q/k/v/o and the SwiGLU matrices, two norm gains."""
        d, kv = self.d_model, self.n_kv_head * self.head_dim
        return 2 * d * self.n_head * self.head_dim + 2 * d * kv + 3 * d * self.d_ff + 2 * d

    def params_by_kind(self) -> dict:
        """Parameters per kind (optim.param_groups.KINDS: embedding, head (untied), hidden matrices, vectors)."""
        d, L, V = self.d_model, self.n_layer, self.vocab_size
        return {"embedding": V * d, "head": 0 if self.tie_embeddings else V * d,
                "hidden": L * (self.block_params() - 2 * d), "vector": L * 2 * d + d}

    def num_params(self, embeddings: bool = True) -> int:
        kinds = self.params_by_kind()
        n = sum(kinds.values())
        return n if embeddings else n - kinds["embedding"]  # an untied head is a matmul, counted in FLOPs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cache(config: GPTConfig, seq_len: int, device, dtype):
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, device=device, dtype=torch.int64)
                                            .float() / config.head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        hd = config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.n_head * hd, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.n_kv_head * hd, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(config.n_head * hd, config.d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(B, T, c.n_head, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if c.n_kv_head != c.n_head:
            rep = c.n_head // c.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=parametrization.attn_scale(c))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)
        self.residual_multiplier = parametrization.residual_multiplier(config)  # CompleteP: (L / L_base)^-alpha

    def forward(self, x, cos, sin):
        r = self.residual_multiplier
        if r == 1.0:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + r * self.self_attn(self.input_layernorm(x), cos, sin)
        return x + r * self.mlp(self.post_attention_layernorm(x))


class GPTBody(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)


class GPT(PreTrainedModel):
    config_class = GPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True  # config.activation_checkpointing; HF's *_checkpointing_enable set it
    _supports_sdpa = True
    accepts_loss_kwargs = False  # forward returns a mean loss; the HF Trainer must scale it for accumulation
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # used only when config ties them

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.model = GPTBody(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()  # transformers bookkeeping (ties lm_head to the embedding when config.tie_embeddings)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        parametrization.init_weights(self)

    # transformers uses these for tying and resizing
    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return None if self.config.tie_embeddings else self.lm_head

    def _init_weights(self, module):  # initialization is done once, in parametrization.init_weights
        pass

    # transformers' activation_checkpointing_enable/disable (and the Trainer's gradient_checkpointing=True) land
    # here: every block is checkpointed (use_reentrant=False); every_n_layers and a custom checkpoint function are
    # refused rather than ignored
    @property
    def gradient_checkpointing(self) -> bool:
        return bool(self.config.activation_checkpointing)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, every_n_layers=1):
        func = getattr(gradient_checkpointing_func, "func", gradient_checkpointing_func)
        kw = getattr(gradient_checkpointing_func, "keywords", {})
        if enable and (every_n_layers != 1 or func not in (None, checkpoint) or kw.get("use_reentrant", False)):
            raise ValueError("GPT checkpoints every block with torch.utils.checkpoint(use_reentrant=False) only")
        self.config.activation_checkpointing = enable

    def forward(self, input_ids, labels=None, attention_mask=None, **kwargs):
        c = self.config
        T = input_ids.shape[1]
        x = self.model.embed_tokens(input_ids)
        if c.embed_multiplier != 1.0:
            x = x * c.embed_multiplier
        cos, sin = rope_cache(c, T, x.device, x.dtype)
        recompute = c.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.model.layers:
            x = checkpoint(block, x, cos, sin, use_reentrant=False) if recompute else block(x, cos, sin)
        x = self.model.norm(x)
        logits = self.lm_head(x)
        readout = parametrization.readout_multiplier(c)  # muP: logit_multiplier / (d_model / base_width)
        if readout != 1.0:
            logits = logits * readout
        loss = None
        if labels is not None:  # transformers convention: labels == input_ids, shifted here
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N (non-embedding params incl. an untied head matmul, plus the tied head
    matmul) + attention 12 * L * d * T (PaLM appendix B)."""
    n = config.num_params(embeddings=False) + config.vocab_size * config.d_model * (1 if config.tie_embeddings else 0)
    return 6 * n + 12 * config.n_layer * config.d_model * seq_len
