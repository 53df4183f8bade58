"""The LM head and the cross-entropy fused, chunked over the rows.

The plain path computes logits for the whole batch, (B·T) × vocab, and the loss in fp32: for
GPT-2 small at B=180, T=256 that is 46,080 × 50,257 floats, 9.3 GB in fp32, plus as much again
for their gradient. Here the rows are processed `chunk_rows` at a time: each chunk's logits are
made, turned into its loss and, at once, into the gradients of the hidden states and of the head
weight (softmax − one-hot), then dropped. Only the hidden states' gradient (B·T × d) and the
weight's (vocab × d) are kept for the backward pass, which just scales them. Peak memory for the
head falls from O(B·T·vocab) to O(chunk_rows·vocab).

The gradients are computed in the forward pass, so this is for training (a scalar mean loss that
is back-propagated). Without gradients (validation) `chunked_mean_loss` walks the same chunks
and keeps only the sum, so a run that needs the chunked head to fit in memory still fits when it
validates. Per-position losses (`loss_per_position`, for `arrows compare`) use the plain path.
"""

from __future__ import annotations

import torch

HEAD_LOSSES = ("plain", "chunked")  # model_params.head_loss: logits of the whole batch, or this
DEFAULT_CHUNK_ROWS = 4096


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            logits = (h @ weight.t()).float()  # (rows, vocab): the only large tensor, one chunk at a time
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax − one-hot, made in place of the logits.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
            g = grad_logits.to(h.dtype)  # the matmuls run in the model's dtype (bf16 under autocast)
            grad_hidden[start : start + chunk_rows] = g @ weight
            grad_weight += (g.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n, ctx.weight_dtype = n, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.n
        return (grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype), None, None)


@torch.no_grad()
def chunked_mean_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """The mean cross-entropy of chunked_head_loss, without gradients: one chunk of logits at a time."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        logits = (hidden[start : start + chunk_rows] @ weight.t()).float()
        total += torch.nn.functional.cross_entropy(logits, targets[start : start + chunk_rows], reduction="sum")
    return total / hidden.shape[0]


def head_and_loss(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor | None, mode: str):
    """The models' shared end: (B, T, d) final states -> (logits (B, T, vocab), mean loss in
    nats/token, or None without targets). `mode` is model_params.head_loss: with "chunked" and
    targets the head and loss are fused and the logits are None."""
    if mode == "chunked" and targets is not None:
        fused = chunked_head_loss if torch.is_grad_enabled() else chunked_mean_loss
        return None, fused(hidden.reshape(-1, hidden.size(-1)), head.weight, targets.reshape(-1))
    logits = head(hidden)
    loss = None
    if targets is not None:
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
    return logits, loss


def chunked_head_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """Mean cross-entropy (nats/token) of `targets` (N,) under logits `hidden (N, d) @ weight (V, d)ᵀ`,
    without ever holding more than `chunk_rows` rows of logits."""
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, d) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    return _ChunkedHeadLoss.apply(hidden, weight, targets, int(chunk_rows))
