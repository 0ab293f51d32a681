"""Exact activation memory of `gpt.GPT`: the bytes autograd saves for backward in one training forward.

Symbols: B micro batch, T sequence length, d d_model, H n_head, K n_kv_head, hd head_dim (H*hd == d), f d_ff,
V vocab_size, L n_layer; a = dtype_bytes (what the matmuls and attention write: 2 for bf16, 4 for fp32);
R = bytes of the residual stream: 4 with fp32 parameters (fp32 on CPU, or torch.autocast to bf16 on a GPU:
the embedding output is fp32 and `x + f(x)` promotes the bf16 branch back to fp32), a when the parameters
themselves are low precision (`autocast=False`: DeepSpeed bf16, FSDP's param_dtype=bf16); n_q, n_m = how many
copies of a norm output the projections save: 3 and 2 under autocast (it casts the fp32 input once per
projection), 1 and 1 otherwise (the q/k/v projections save the same tensor; gate/up too).

Per block (`per_layer`), each term the tensor(s) one op saves, counted once per storage:
  2 x RMSNorm   x.pow(2) and x*r save the fp32 input (the residual itself when R == 4, else x.float()): 4*B*T*d;
                rsqrt saves r: 4*B*T; weight*x_hat saves x_hat cast back to the input dtype: R*B*T*d
  q/k/v_proj    save their input: n_q*a*B*T*d (the weights are parameters, not counted here)
  RoPE          q*cos, rotate_half(q)*sin save only cos/sin (shared by all layers: under `embedding`);
                repeat_interleave (GQA, K < H) saves no tensor, so K does not appear: SDPA gets H heads
  SDPA          saves q, k, v (H heads after the repeat) and out: 4*a*B*H*T*hd, and logsumexp: 4*B*H*T (fp32).
                On CPU this is the flash-CPU kernel; the CUDA flash / memory-efficient / cuDNN kernels save the
                same q, k, v, out plus an fp32 logsumexp of B*H*T (efficient: T padded to a multiple of 32) and
                an RNG seed/offset of a few bytes; only the math fallback (not used for these shapes) would add
                the B*H*T*T attention matrix
  o_proj        saves its input, a view of SDPA's out (no new storage)
  gate/up_proj  save their input: n_m*a*B*T*d
  SwiGLU        silu saves gate: a*B*T*f; silu(gate)*up saves both: 2*a*B*T*f; down_proj saves the product: a*B*T*f
  => per_layer = 2*(4*B*T*d + 4*B*T + R*B*T*d) + (n_q + n_m)*a*B*T*d + 4*a*B*H*T*hd + 4*B*H*T + 4*a*B*T*f

`embedding`: the embedding saves the int64 ids: 8*B*T; the RoPE tables cos, sin: 2*T*hd*R.
`head`: final RMSNorm 4*B*T*d + 4*B*T + R*B*T*d; lm_head saves its input a*B*T*d; the loss runs on
logits[:, :-1].float(): log_softmax saves its fp32 output (nll_loss saves the same tensor): 4*B*(T-1)*V;
nll_loss saves the int64 targets 8*B*(T-1) (a copy of labels[:, 1:]; none when B == 1: then it is a view of
the labels, which the training step passes as the input ids, already counted) and an fp32 total_weight: 4.
The logits themselves (a*B*T*V), the fp32 cast and the flattening copy are not saved: they are the transient
`head_peak`.
`weight_copies`: under autocast (a < 4, fp32 parameters) every matmul saves its bf16 copy of the weight:
a*(L*(d*H*hd + 2*d*K*hd + H*hd*d + 3*d*f) + V*d); 0 otherwise. Saved for backward too, but parameter-sized and
independent of the batch, so not in `total`: a planner adds it where the run autocasts fp32 parameters (DDP).
`total` = layers + embedding + head.

Checkpointed (`checkpointing=True`, torch.utils.checkpoint(use_reentrant=False) per block): a block keeps only
its inputs, `per_layer` = R*B*T*d (x; cos/sin stay under `embedding`), and `recompute_peak` is what recomputing
one block in backward saves again: the full per-block set less the input it already holds (4*B*T*d when R == 4;
nothing when the norm's fp32 copy is a new tensor) plus, under autocast, that block's weight copies.
`weight_copies` then holds only the head's a*V*d. The planner adds recompute_peak to total.

Not in total: `head_peak`, the loss's transient bytes on top of what is saved: max(forward: logits a*B*T*V +
the fp32 flat logits 4*B*(T-1)*V; backward: the gradients of log_softmax's output and input 2*4*B*(T-1)*V).
"""
from __future__ import annotations


def activation_bytes(config, micro_batch: int, seq_len: int, *, dtype_bytes: int = 2, checkpointing=None,
                     autocast: bool = True) -> dict:
    """Bytes saved for backward by one training forward (with the loss) of `GPT(config)` on a
    (micro_batch, seq_len) batch; see the module docstring for every term. autocast: the parameters are fp32 and
    the forward runs under torch.autocast to the dtype_bytes dtype (accelerate mixed_precision="bf16" under DDP or
    one GPU); False when the parameters are held in that dtype (DeepSpeed bf16, FSDP param_dtype). Irrelevant
    when dtype_bytes == 4."""
    if checkpointing is None:
        checkpointing = bool(getattr(config, "activation_checkpointing", False))
    B, T, a = int(micro_batch), int(seq_len), int(dtype_bytes)
    d, H, hd, f = config.d_model, config.n_head, config.head_dim, config.d_ff
    V, L = config.vocab_size, config.n_layer
    casts = autocast and a < 4
    R = 4 if casts or a == 4 else a
    n_q, n_m = (3, 2) if casts else (1, 1)
    BT = B * T

    def rmsnorm():
        return 4 * BT * d + 4 * BT + R * BT * d

    block = (2 * rmsnorm() + (n_q + n_m) * a * BT * d + 4 * a * B * H * T * hd + 4 * B * H * T
             + 4 * a * BT * f)
    block_weights = a * (config.block_params() - 2 * d) if casts else 0  # the block's matrices (norm gains: fp32)
    head_weights = a * V * d if casts else 0
    embedding = 8 * BT + 2 * T * hd * R
    n_loss = B * (T - 1)
    head = rmsnorm() + a * BT * d + 4 * n_loss * V + (8 * n_loss if B > 1 else 0) + 4
    head_peak = max(a * BT * V + 4 * n_loss * V, 2 * 4 * n_loss * V)
    out = {"embedding": embedding, "head": head, "head_peak": head_peak}
    if checkpointing:
        per_layer = R * BT * d
        weight_copies = head_weights
        out["recompute_peak"] = block - (4 * BT * d if R == 4 else 0) + block_weights
    else:
        per_layer = block
        weight_copies = L * block_weights + head_weights
    out.update(per_layer=per_layer, layers=L * per_layer, weight_copies=weight_copies)
    out["total"] = out["layers"] + embedding + head
    return out
