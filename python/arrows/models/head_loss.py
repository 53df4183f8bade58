"""The LM head and the cross-entropy fused, chunked over the rows.

The plain path computes logits for the whole batch, (B·T) × vocab, and the loss in fp32: for
GPT-2 small at B=180, T=256 that is 46,080 × 50,257 floats, 9.3 GB in fp32, plus as much again
for their gradient. Here the rows are processed `chunk_rows` at a time: each chunk's logits are
made, turned into its loss and, in place, into the gradient of the loss with respect to them
(softmax − one-hot), which at once gives the chunk's gradients of the hidden states and of the
head weight; then the chunk is dropped. Only the hidden states' gradient (B·T × d) and the
weight's (vocab × d) are kept for the backward pass, which just scales them. Peak memory for the
head falls from O(B·T·vocab) to O(chunk_rows·vocab).

On CUDA the loss and gradient of each chunk come from one Triton kernel (triton_cross_entropy.py).
Elsewhere the same steps run as torch operations.

On CUDA both heads pad the vocabulary to a multiple of 128 inside their matrix products (zero rows
appended to the weight, the extra columns of the logits ignored): with 50,257 columns the logits'
rows are not 16-byte aligned, which keeps cuBLAS off Hopper's fastest kernels (an H200 profile of
GPT-2 small showed an Ampere-generation kernel taking 6.8 ms of a 93 ms step for the head; nanoGPT
measured the same effect on an A100). Under torch.compile the padding costs no pass of its own:
Inductor fuses the weight's padding with its cast, and the cross-entropy's backward writes the
padded gradient directly.

The gradients are computed in the forward pass, so this is for training (a scalar mean loss that
is back-propagated). Without gradients (validation) `chunked_mean_loss` walks the same chunks
and keeps only the sum, so a run that needs the chunked head to fit in memory still fits when it
validates. Per-position losses (`loss_per_position`, for `arrows compare`) use the plain path.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

# model_params.head_loss: "plain" (logits of the whole batch), "chunked" (this), or "auto", which
# picks by device when the loss is computed: chunked on a CPU, where it measured 2.2× faster and
# 2.7× smaller than plain (nano GPT, batch 32: the plain head's page faults and fp32 copies
# dominate the step); plain on CUDA, where the chunked head's Triton path has not yet been timed.
HEAD_LOSSES = ("auto", "plain", "chunked")
DEFAULT_CHUNK_ROWS = 8192
# A target equal to this adds no loss and no gradient, and is not counted in the mean: torch's
# cross_entropy default, which the plain head inherits and the chunked head follows.
IGNORE_INDEX = -100
VOCAB_MULTIPLE = 128  # the padded vocabulary of the head's matrix products on CUDA


def vocab_multiple_for(device: torch.device) -> int:
    """The multiple the head pads the vocabulary to inside its matrix products on `device`: 128 on
    CUDA (aligned rows), none elsewhere (a CPU's products gain nothing from it)."""
    return VOCAB_MULTIPLE if device.type == "cuda" else 1


def head_logits(hidden: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """The plain head: (..., d) final states -> (..., vocab) logits, the product made over the
    vocabulary padded for the device (vocab_multiple_for); the result is a view without the
    padding columns."""
    vocab = head.out_features
    pad = (-vocab) % vocab_multiple_for(hidden.device)
    if pad == 0:
        return head(hidden)
    bias = None if head.bias is None else F.pad(head.bias, (0, pad))
    return F.linear(hidden, F.pad(head.weight, (0, 0, 0, pad)), bias)[..., :vocab]


def softmax_xent_rows_torch_(logits: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """triton_cross_entropy.softmax_xent_rows_ in torch operations (CPU, or CUDA without Triton):
    per-row losses in fp32; `logits` overwritten with softmax − one-hot (0 past `n_classes`)."""
    x = logits[:, :n_classes].float()  # a view of `logits` when they are fp32
    target_logits = x.gather(1, targets[:, None]).squeeze(1)
    # Every step in place: no second tensor of the logits' size (logsumexp would make two).
    row_max = x.amax(dim=-1, keepdim=True)
    exp = x.sub_(row_max).exp_()
    sums = exp.sum(dim=-1, keepdim=True)
    losses = (row_max + sums.log()).squeeze(1) - target_logits  # lse − logit[target]
    grad = exp.div_(sums)  # softmax
    grad[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    if grad.data_ptr() != logits.data_ptr():  # else it was made in place already
        logits[:, :n_classes] = grad
    logits[:, n_classes:] = 0.0
    return losses


def rows_kernel_for(device: torch.device):
    """The per-row loss-and-gradient function for tensors on `device`."""
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        from arrows.models.triton_cross_entropy import softmax_xent_rows_

        return softmax_xent_rows_
    return softmax_xent_rows_torch_


def _compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype autocast would give the head's matrix product here (bf16 in a CUDA run)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, rows_kernel, vocab_multiple: int) -> torch.Tensor:
        n, vocab = hidden.shape[0], weight.shape[0]
        counted = targets != IGNORE_INDEX
        n_counted = counted.sum()  # a tensor: the step never waits for the device
        safe_targets = torch.where(counted, targets, 0)  # an ignored row's loss and gradient are zeroed below
        dtype = _compute_dtype(hidden.device, weight.dtype)
        # One cast (and pad) of the weight and the hidden states for all chunks, as autocast would
        # make for each matrix product; padding rows are zeros, so their logits are 0 and ignored.
        w = F.pad(weight.to(dtype), (0, 0, 0, (-vocab) % vocab_multiple))
        h_all = hidden.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None  # summed over the chunks in fp32 (fp64 for fp64 weights), (padded vocab, d)
        sum_dtype = torch.promote_types(dtype, torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # One buffer for every chunk's logits, the only large tensor: on a CPU, a fresh allocation
        # of that size per chunk went to the system each time, and its page faults took longer
        # than the arithmetic.
        logits_buffer = torch.empty(min(n, chunk_rows), w.shape[0], dtype=dtype, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are set above
            for start in range(0, n, chunk_rows):
                rows = slice(start, start + chunk_rows)
                h = h_all[rows]
                keep = counted[rows]
                logits = torch.matmul(h, w.t(), out=logits_buffer[: h.shape[0]])  # (rows, padded vocab)
                total += (rows_kernel(logits, safe_targets[rows], vocab) * keep).sum()
                grad_logits = logits  # overwritten by the kernel: d(sum of losses)/d(logits)
                # Ignored rows zeroed on the (rows, d) side, not over the far larger logits.
                grad_hidden[rows] = (grad_logits @ w) * keep[:, None]
                part = grad_logits.t() @ (h * keep[:, None])
                grad_weight = part.to(sum_dtype) if grad_weight is None else grad_weight.add_(part)
        if grad_weight is None:  # no rows
            grad_weight = torch.zeros(weight.shape, dtype=sum_dtype, device=weight.device)
        ctx.save_for_backward(grad_hidden, grad_weight[:vocab], n_counted)
        ctx.weight_dtype = weight.dtype
        return total / n_counted

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, n_counted = ctx.saved_tensors
        scale = grad_output / n_counted
        return (grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype), None, None, None, None)


@torch.no_grad()
def chunked_mean_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """The mean cross-entropy of chunked_head_loss, without gradients: one chunk of logits at a time."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = (hidden[start : start + chunk_rows] @ weight.t()).float()
        total += torch.nn.functional.cross_entropy(logits, targets[start : start + chunk_rows], reduction="sum", ignore_index=IGNORE_INDEX)
    # The sum skipped the ignored targets: so does the count.
    return total / (targets != IGNORE_INDEX).sum()


def resolve_head_loss(mode: str, device_type: str) -> str:
    """"plain" or "chunked": what `mode` (model_params.head_loss) means on this kind of device."""
    if mode == "auto":
        return "plain" if device_type == "cuda" else "chunked"
    return mode


def head_and_loss(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor | None, mode: str):
    """The models' shared end: (B, T, d) final states -> (logits (B, T, vocab), mean loss in
    nats/token, or None without targets). `mode` is model_params.head_loss: when it means
    "chunked" (resolve_head_loss) and there are targets, the head and loss are fused and the
    logits are None."""
    if resolve_head_loss(mode, hidden.device.type) == "chunked" and targets is not None:
        fused = chunked_head_loss if torch.is_grad_enabled() else chunked_mean_loss
        return None, fused(hidden.reshape(-1, hidden.size(-1)), head.weight, targets.reshape(-1))
    logits = head_logits(hidden, head)
    loss = None
    if targets is not None:
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
    return logits, loss


# Outside torch.compile's graph: the work here is cuBLAS products and one kernel of our own, which
# leaves Inductor nothing to fuse, and tracing would unroll the loop over chunks. torch's lazy form
# of torch.compiler.disable: the public one imports dynamo (and with it Triton) when this module is
# imported, 1.5 s more for every command that loads a model, and Triton before a test could set
# TRITON_INTERPRET.
@torch._disable_dynamo
def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                      rows_kernel=None, vocab_multiple: int | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of `targets` (N,) under logits `hidden (N, d) @ weight (V, d)ᵀ`,
    without ever holding more than `chunk_rows` rows of logits. Targets equal to IGNORE_INDEX
    (-100) are left out, as torch's cross_entropy does. The per-row loss and gradient
    function (`rows_kernel`) and the multiple the vocabulary is padded to inside the products
    (`vocab_multiple`) are chosen for the device unless given (the tests give them)."""
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, d) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if vocab_multiple is None:
        vocab_multiple = vocab_multiple_for(hidden.device)
    rows_kernel = rows_kernel or rows_kernel_for(hidden.device)
    return _ChunkedHeadLoss.apply(hidden, weight, targets, int(chunk_rows), rows_kernel, vocab_multiple)
