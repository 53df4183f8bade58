"""Softmax cross-entropy of rows of logits and its gradient, in one Triton kernel.

Used by the chunked LM head (head_loss.py) on CUDA. Each chunk of logits (rows × vocabulary, bf16
under autocast) comes out of the head's matrix product; one program per row then

1. reads the row once, keeping a running max and a running sum of exponentials per lane (online
   softmax), which gives the row's log-sum-exp `lse` and its loss, lse − logit[target];
2. reads the row again and writes over it the gradient of that loss, softmax − one-hot
   = exp(logit − lse) − [column = target].

Why a kernel of our own: on an H200, what torch.compile made of `cross_entropy(logits.float())`
and its backward for GPT-2 small (log-softmax forward, backward reduction, backward pointwise: three
kernels, several passes over 46,080 × 50,257 logits) took 12% of the training step. This one
reads the logits twice and writes them once, in place, so no second buffer of that size exists.

The head's vocabulary may be padded (to a multiple of 128, so that the matrix products get aligned
shapes): columns from `n_classes` on are not classes, and their gradient is written as 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from arrows.models.triton_interpreter import INTERPRETED


@triton.jit
def _softmax_xent_rows_kernel(logits_ptr, targets_ptr, losses_ptr, row_stride, n_classes, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row · row_stride passes 2³¹ for a whole batch of logits
    base = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK)

    # Pass 1: per lane, the max seen so far and the sum of exp(x − max). The start is finite, not
    # -inf, so that exp(max_old − max_new) never computes -inf − (-inf) on a lane that has only seen
    # masked columns. A NaN logit makes the sum, hence the loss, NaN: the trainer stops on it.
    lane_max = tl.full([BLOCK], -1e30, tl.float32)
    lane_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_classes, BLOCK):
        cols = start + offsets
        x = tl.load(base + cols, mask=cols < n_classes, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(lane_max, x)
        lane_sum = lane_sum * tl.exp(lane_max - new_max) + tl.exp(x - new_max)
        lane_max = new_max
    row_max = tl.max(lane_max, 0)
    lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), 0))

    target = tl.load(targets_ptr + row)
    # A target outside the classes (the data validation refuses such stores) reads no memory and
    # gives a NaN loss instead of a wrong one.
    target_logit = tl.load(base + target, mask=(target >= 0) & (target < n_classes), other=float("nan")).to(tl.float32)
    tl.store(losses_ptr + row, lse - target_logit)

    # Pass 2: the gradient over the logits, softmax − one-hot; 0 on padding columns (exp(-inf) = 0).
    for start in range(0, n_cols, BLOCK):
        cols = start + offsets
        x = tl.load(base + cols, mask=cols < n_classes, other=float("-inf")).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < n_cols)


# BLOCK: columns read per iteration of a row's loops. On a GPU it is tuned once per row length
# (the chunk's logits are restored between the trials, since the kernel overwrites them); every
# configuration compiles for sm_90 without spilling (32 to 128 registers). The interpreter runs
# numpy on each block: a small block there keeps several iterations per row in the tests, so the
# loops and their edges run.
if INTERPRETED:
    _rows_kernel = _softmax_xent_rows_kernel
    _FIXED_BLOCK = dict(BLOCK=64)
else:
    _rows_kernel = triton.autotune(
        configs=[triton.Config(dict(BLOCK=b), num_warps=w) for b, w in ((1024, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 8), (8192, 16))],
        key=["n_cols"],
        restore_value=["logits_ptr"],
    )(_softmax_xent_rows_kernel)
    _FIXED_BLOCK = {}


def softmax_xent_rows_(logits: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-row cross-entropy (fp32, nats) of `targets` (rows,) under `logits` (rows, n_cols), whose
    first `n_classes` columns are the classes. Overwrites `logits` with the gradient of the summed
    loss with respect to them: softmax − one-hot, and 0 in the columns past `n_classes`."""
    rows, n_cols = logits.shape
    if logits.stride(1) != 1 or not (0 < n_classes <= n_cols) or targets.shape != (rows,):
        raise ValueError(f"softmax_xent_rows_: logits must be (rows, cols) with unit column stride and targets (rows,); "
                         f"got {tuple(logits.shape)} (strides {logits.stride()}), targets {tuple(targets.shape)}, n_classes {n_classes}")
    if logits.device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"softmax_xent_rows_ runs on CUDA, not on {logits.device.type} (or set TRITON_INTERPRET=1 before starting)")
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        _rows_kernel[(rows,)](logits, targets, losses, logits.stride(0), n_classes, n_cols, **_FIXED_BLOCK)
    return losses
