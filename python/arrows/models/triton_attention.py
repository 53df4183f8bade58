"""Causal self-attention as fused Triton kernels of our own: forward and backward, with dropout.

The algorithm is FlashAttention-2's. For each block of query rows the forward pass streams over
the key blocks at or before it, keeping a running max `m` and running sum `l` of the softmax
(online softmax), so the (T, T) score matrix never exists in memory. It stores the output and,
per row, the log-sum-exp `lse` of the scores. The backward pass recomputes each score block from
q, k and `lse` instead of storing probabilities:

    p  = exp(s - lse)                  dV += pᵀ·dO     (p with dropout applied, as in the forward)
    dp = dO·Vᵀ                         ds  = p ∘ (dp - Δ),  Δ = rowsum(dO ∘ O)
    dQ += ds·K · scale                 dK += dsᵀ·Q · scale

dK, dV are made by one kernel per key block (looping over the query blocks that see it), and dQ by
another per query block, so that no two programs write the same rows (no atomics).

Dropout on the attention weights (the reference's `attn_dropout`) is drawn inside the kernels
from Philox, keyed on a seed tensor drawn from torch's generator per call and on the (row, column)
of each weight, so the backward pass regenerates exactly the forward's mask, and the run is
reproducible from torch's RNG state (which the checkpoints save).

Exposed as the custom operators `arrows::attention_forward` and `arrows::attention_backward`
(`torch.library.triton_op`), joined by `register_autograd`: torch.compile traces through them,
sees the kernels, and keeps them in its graph instead of breaking it.

Runs on CUDA tensors; with `TRITON_INTERPRET=1` set before this module is imported, Triton's
interpreter runs the same kernels on CPU tensors (slowly), which is how the tests check them on a
machine without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from arrows.models.triton_interpreter import INTERPRETED
LOG2E = 1.4426950408889634  # the kernels use exp2, the native instruction: exp(x) = exp2(x·log2 e)


@triton.jit
def _keep_mask(seed_ptr, bh, offs_m, offs_n, T, p_drop):
    """The dropout mask of the weights (offs_m × offs_n) of head `bh`: True where a weight is kept."""
    seed = tl.load(seed_ptr) + bh  # one Philox key per (batch, head): offsets stay below T² < 2³¹
    return tl.rand(seed, offs_m[:, None] * T + offs_n[None, :]) >= p_drop


@triton.jit
def _load_rows(base, rows, stride_t, offs_d, d_ok, T):
    """Rows `rows` of one head's (T, D) matrix starting at `base`; zeros past T and past D."""
    return tl.load(base + rows[:, None] * stride_t + offs_d[None, :], mask=(rows[:, None] < T) & d_ok[None, :], other=0.0)


@triton.jit
def _scores(q, k, offs_m, offs_n, T, scale_log2, MASKED: tl.constexpr):
    """q·kᵀ of a (query block × key block), scaled to log2 units; -inf where a key is not visible.
    Blocks wholly below the diagonal (MASKED false) need no mask: every key in them is visible."""
    s = tl.dot(q, tl.trans(k)) * scale_log2
    if MASKED:
        visible = (offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < T)
        s = tl.where(visible, s, float("-inf"))
    return s


@triton.jit
def _forward_block(acc, m_i, l_i, q, k_base, v_base, skt, svt, SEED, bh, offs_m, start_n, offs_d, d_ok, T, scale_log2, p_drop,
                   BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr, MASKED: tl.constexpr):
    """One key block of the online softmax: the running max, sum and output, updated."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, skt, offs_d, d_ok, T)
    v = _load_rows(v_base, offs_n, svt, offs_d, d_ok, T)
    s = _scores(q, k, offs_m, offs_n, T, scale_log2, MASKED)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        keep = _keep_mask(SEED, bh, offs_m, offs_n, T, p_drop)
        p = tl.where(keep, p / (1.0 - p_drop), 0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _forward_kernel(
    Q, K, V, O, LSE, SEED,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
    H, T, T_BUCKET, HEAD_DIM, scale_log2, p_drop,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
):
    # T_BUCKET (T rounded up to a power of two) is only the autotuning key: generation calls with
    # every length from 1 to attn_length, and must not re-tune for each.
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)  # BLOCK_D is HEAD_DIM rounded up to a power of two
    d_ok = offs_d < HEAD_DIM
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqt, offs_d, d_ok, T)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of the scaled scores (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(score - m_i), before dropout
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key blocks before this query block are wholly visible (BLOCK_N divides BLOCK_M); the blocks
    # on the diagonal get the causal mask. Key 0 is visible to every row, so no row is empty.
    for start_n in range(0, start_m, BLOCK_N):
        acc, m_i, l_i = _forward_block(acc, m_i, l_i, q, k_base, v_base, skt, svt, SEED, bh, offs_m, start_n, offs_d, d_ok, T,
                                       scale_log2, p_drop, BLOCK_N, DROPOUT, False)
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
        acc, m_i, l_i = _forward_block(acc, m_i, l_i, q, k_base, v_base, skt, svt, SEED, bh, offs_m, start_n, offs_d, d_ok, T,
                                       scale_log2, p_drop, BLOCK_N, DROPOUT, True)

    row_ok = offs_m < T
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)  # log2-sum-exp2 of the row
    o = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _delta_kernel(O, DO, DELTA, sob, soh, sot, H, T, HEAD_DIM, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Δ = rowsum(dO ∘ O), per row, in fp32: the softmax's backward needs it for every score."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    where = b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :]
    o = tl.load(O + where, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + where, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


# In the backward kernels, rows and columns past T are loaded as zeros (q, dO, k, v, lse, Δ): the
# weights they produce are finite and multiply zeros, so they add nothing to dQ, dK or dV.


@triton.jit
def _dkdv_block(dk, dv, k, v, q_base, do_base, LSE, DELTA, SEED, bh, sqt, sot, offs_n, start_m, offs_d, d_ok, T, scale_log2, p_drop,
                BLOCK_M: tl.constexpr, DROPOUT: tl.constexpr, MASKED: tl.constexpr):
    """The contribution of one query block to a key block's dK and dV."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_ok = offs_m < T
    q = _load_rows(q_base, offs_m, sqt, offs_d, d_ok, T)
    do = _load_rows(do_base, offs_m, sot, offs_d, d_ok, T)
    lse = tl.load(LSE + bh * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=m_ok, other=0.0)
    p = tl.exp2(_scores(q, k, offs_m, offs_n, T, scale_log2, MASKED) - lse[:, None])  # the weights, recomputed
    dp = tl.dot(do, tl.trans(v))
    if DROPOUT:
        keep = _keep_mask(SEED, bh, offs_m, offs_n, T, p_drop)
        dv += tl.dot(tl.trans(tl.where(keep, p / (1.0 - p_drop), 0.0).to(do.dtype)), do)
        dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
    else:
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, SEED, DK, DV,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sgb, sgh, sgt,
    H, T, HEAD_DIM, scale, scale_log2, p_drop,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
):
    """dK and dV of one key block, summed over the query blocks at or after it (causal). Query and
    key blocks have one size, so exactly one query block straddles the diagonal."""
    start_n = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_n = start_n + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_mask = (offs_n[:, None] < T) & d_ok[None, :]
    k = _load_rows(K + b * skb + h * skh, offs_n, skt, offs_d, d_ok, T)
    v = _load_rows(V + b * svb + h * svh, offs_n, svt, offs_d, d_ok, T)
    q_base, do_base = Q + b * sqb + h * sqh, DO + b * sob + h * soh
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, LSE, DELTA, SEED, bh, sqt, sot, offs_n, start_n, offs_d, d_ok, T, scale_log2, p_drop,
                         BLOCK, DROPOUT, True)
    for start_m in range(start_n + BLOCK, T, BLOCK):
        dk, dv = _dkdv_block(dk, dv, k, v, q_base, do_base, LSE, DELTA, SEED, bh, sqt, sot, offs_n, start_m, offs_d, d_ok, T, scale_log2,
                             p_drop, BLOCK, DROPOUT, False)
    where = b * sgb + h * sgh + offs_n[:, None] * sgt + offs_d[None, :]
    tl.store(DK + where, (dk * scale).to(DK.dtype.element_ty), mask=n_mask)
    tl.store(DV + where, dv.to(DV.dtype.element_ty), mask=n_mask)


@triton.jit
def _dq_block(dq, q, do, lse, delta, k_base, v_base, SEED, bh, skt, svt, offs_m, start_n, offs_d, d_ok, T, scale_log2, p_drop,
              BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr, MASKED: tl.constexpr):
    """The contribution of one key block to a query block's dQ."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, skt, offs_d, d_ok, T)
    v = _load_rows(v_base, offs_n, svt, offs_d, d_ok, T)
    p = tl.exp2(_scores(q, k, offs_m, offs_n, T, scale_log2, MASKED) - lse[:, None])
    dp = tl.dot(do, tl.trans(v))
    if DROPOUT:
        dp = tl.where(_keep_mask(SEED, bh, offs_m, offs_n, T, p_drop), dp / (1.0 - p_drop), 0.0)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, SEED, DQ,
    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sgb, sgh, sgt,
    H, T, HEAD_DIM, scale, scale_log2, p_drop,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, DROPOUT: tl.constexpr,
):
    """dQ of one query block, summed over the key blocks at or before it (causal)."""
    start_m = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    offs_m = start_m + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < T
    m_mask = m_ok[:, None] & d_ok[None, :]
    q = _load_rows(Q + b * sqb + h * sqh, offs_m, sqt, offs_d, d_ok, T)
    do = _load_rows(DO + b * sob + h * soh, offs_m, sot, offs_d, d_ok, T)
    lse = tl.load(LSE + bh * T + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh * T + offs_m, mask=m_ok, other=0.0)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for start_n in range(0, start_m, BLOCK):
        dq = _dq_block(dq, q, do, lse, delta, k_base, v_base, SEED, bh, skt, svt, offs_m, start_n, offs_d, d_ok, T, scale_log2, p_drop,
                       BLOCK, DROPOUT, False)
    dq = _dq_block(dq, q, do, lse, delta, k_base, v_base, SEED, bh, skt, svt, offs_m, start_m, offs_d, d_ok, T, scale_log2, p_drop,
                   BLOCK, DROPOUT, True)
    tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=m_mask)


@triton.jit
def _dropout_mask_kernel(SEED, KEEP, T, p_drop, BLOCK: tl.constexpr):
    """The kernels' dropout mask written out, (B·H, T, T) of 0/1, so that tests can check them
    against plain attention with the very same mask."""
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bh = tl.program_id(1)
    for start_n in range(0, T, BLOCK):
        offs_n = start_n + tl.arange(0, BLOCK)
        keep = _keep_mask(SEED, bh, offs_m, offs_n, T, p_drop)
        inside = (offs_m[:, None] < T) & (offs_n[None, :] < T)
        tl.store(KEEP + bh * T * T + offs_m[:, None] * T + offs_n[None, :], keep.to(tl.int8), mask=inside)


# ---- block sizes ----------------------------------------------------------------------------
# On a GPU the forward's blocks are autotuned per (T, head size); in the interpreter small fixed
# blocks keep the tests quick and still give several blocks per row, so the loops and their edges
# are exercised.
if INTERPRETED:
    _forward = _forward_kernel
    FORWARD_BLOCKS = dict(BLOCK_M=32, BLOCK_N=16)  # two key blocks per diagonal, as on a GPU
else:
    _forward = triton.autotune(
        configs=[
            triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn), num_warps=w, num_stages=s)
            for bm, bn, w, s in ((128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4))
        ],
        key=["T_BUCKET", "HEAD_DIM", "DROPOUT"],
    )(_forward_kernel)
    FORWARD_BLOCKS = {}
# The backward kernels: one square block size (so one block straddles the diagonal), fixed at a
# size that suits D ≤ 128 on Hopper (the register pressure of four accumulating dots rules out
# 128×128 tiles).
BACKWARD_BLOCKS = dict(BLOCK=16) if INTERPRETED else dict(BLOCK=64, num_warps=4, num_stages=2)
DELTA_BLOCK = 16 if INTERPRETED else 128


def _launch(kernel):
    """`kernel[grid](...)`, made visible to torch.compile and torch.export by wrap_triton. The
    interpreter's kernels are called as they are: they run on CPU tensors, and cannot be traced
    (torch.compile is for CUDA here; the GPU tests check the compiled path)."""
    return kernel if INTERPRETED else torch.library.wrap_triton(kernel)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy where its elements do not fill one block of memory (the heads split
    out of one qkv projection leave gaps between them).

    Why: the kernels get strides as plain integers. Under torch.compile they are read once, while
    tracing, and baked into the compiled graph; Inductor keeps only the *order* of a kernel
    argument's strides and may lay a gapped view out afresh, densely, so that the baked strides
    would address the wrong elements. A dense tensor has exactly one layout per stride order, so
    what the kernel is told and what it gets agree."""
    if t.size(-1) > 1 and t.stride(-1) != 1:  # the kernels step through D one element at a time
        return t.contiguous()
    dims = sorted((d for d in range(t.dim()) if t.size(d) > 1), key=t.stride)
    expected = 1
    for d in dims:
        if t.stride(d) != expected:
            return t.contiguous()
        expected *= t.size(d)
    return t


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not (q.shape == k.shape == v.shape) or q.dim() != 4:
        raise ValueError(f"attention 'triton': q, k, v must be (B, H, T, D) of one shape, not {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"attention 'triton' runs on CUDA, not on {q.device.type}; use attention 'sdpa' here "
            "(or set TRITON_INTERPRET=1 before starting to run the kernel in Triton's interpreter, slowly)"
        )


@torch.library.triton_op("arrows::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seed: torch.Tensor, p_drop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, T, D) q, k, v -> output (B, H, T, D), laid out as (B, T, H, D) so that merging the
    heads afterwards is free, and the rows' log2-sum-exp2 (B·H, T) in fp32."""
    B, H, T, D = q.shape
    q, k, v = _dense(q), _dense(k), _dense(v)
    o = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)  # dense: a permutation
    lse = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs ≥ 16; the padding is masked
    scale = 1.0 / math.sqrt(D)

    def grid(meta):
        return (triton.cdiv(T, meta["BLOCK_M"]), B * H)

    _launch(_forward)[grid](
        q, k, v, o, lse, seed, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, T, triton.next_power_of_2(T), D, scale * LOG2E, p_drop, BLOCK_D=block_d, DROPOUT=p_drop > 0, **FORWARD_BLOCKS,
    )
    return o, lse


@torch.library.triton_op("arrows::attention_backward", mutates_args=())
def attention_backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, seed: torch.Tensor, p_drop: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV, each (B, H, T, D) laid out as (B, T, H, D), as the output: dense (see _dense)."""
    B, H, T, D = q.shape
    q, k, v = _dense(q), _dense(k), _dense(v)
    if do.stride() != o.stride():  # the kernels read dO with O's strides
        do = torch.empty_like(o).copy_(do)
    dq, dk, dv = (torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2) for _ in range(3))
    delta = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(D))
    scale = 1.0 / math.sqrt(D)
    _launch(_delta_kernel)[(triton.cdiv(T, DELTA_BLOCK), B * H)](
        o, do, delta, *_strides(o), H, T, D, BLOCK_M=DELTA_BLOCK, BLOCK_D=block_d
    )
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(o), *_strides(dq), H, T, D, scale, scale * LOG2E, p_drop)
    blocks = dict(BLOCK_D=block_d, DROPOUT=p_drop > 0, **BACKWARD_BLOCKS)
    grid = (triton.cdiv(T, BACKWARD_BLOCKS["BLOCK"]), B * H)
    _launch(_dkdv_kernel)[grid](q, k, v, do, lse, delta, seed, dk, dv, *common, **blocks)
    _launch(_dq_kernel)[grid](q, k, v, do, lse, delta, seed, dq, *common, **blocks)
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v, seed, p_drop = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, seed)
    ctx.p_drop = p_drop


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, seed = ctx.saved_tensors
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, seed, ctx.p_drop)
    return dq, dk, dv, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√D + causal mask) with dropout on the weights, then ·v; (B, H, T, D) in and out."""
    _check(q, k, v)
    q, k, v = _dense(q), _dense(k), _dense(v)  # here, so that the backward saves the dense copies
    seed = torch.randint(0, 2**30, (1,), dtype=torch.int32, device=q.device) if dropout_p > 0 else torch.zeros(1, dtype=torch.int32, device=q.device)
    return attention_forward(q, k, v, seed, float(dropout_p))[0]


def dropout_keep_mask(seed: torch.Tensor, batch_heads: int, T: int, p_drop: float) -> torch.Tensor:
    """(B·H, T, T) bool: the attention weights the kernels keep for this seed and p_drop."""
    keep = torch.empty((batch_heads, T, T), dtype=torch.int8, device=seed.device)
    _dropout_mask_kernel[(triton.cdiv(T, 16), batch_heads)](seed, keep, T, p_drop, BLOCK=16)
    return keep.bool()
