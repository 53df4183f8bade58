"""Which attention kernel a run uses when its config says `attention: "auto"` (the default).

On CUDA, before the model is compiled, each candidate kernel runs forward + backward at the run's
own shape (batch per process, heads, window, head size, bf16, dropout), on heads split out of one
qkv projection as the GPT makes them: first checked against SDPA's output and gradients without
dropout, then timed. The fastest correct one wins; a candidate must beat SDPA by `MARGIN` to
replace it, since SDPA's flash kernel is the proven one. A candidate that fails to run or to match
is dropped, and the report says why. On a CPU, and for anything but CUDA, "auto" is SDPA, with no
measurement.

When the run compiles its model, every kernel is checked and timed as torch.compile makes it,
since that is what the run executes: a kernel can be right eagerly and wrong compiled (arrows'
Triton kernels were, on an H200 with torch 2.11, before their arguments were made dense).

The choice changes no weight, so a checkpoint resumes under any kernel.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from arrows.models.gpt import split_heads  # q, k, v exactly as the model makes them

MARGIN = 0.97  # a candidate is chosen over SDPA only if it takes at most this fraction of SDPA's time
TOLERANCE = 3e-2  # bf16: outputs and gradients within this of SDPA's (relative to their scale)

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


def cuda_candidates() -> dict[str, Kernel]:
    """The kernels "auto" considers on CUDA besides SDPA: arrows' Triton kernels, when Triton is
    installed. (FlexAttention has no dropout and measured slower than SDPA: DESIGN §7.)"""
    try:
        from arrows.models.triton_attention import causal_attention
    except ImportError:
        return {}
    return {"triton": causal_attention}


def choose_attention(batch: int, heads: int, length: int, head_dim: int, dropout: float, device: torch.device | str,
                     candidates: dict[str, Kernel] | None = None, dtype: torch.dtype = torch.bfloat16, reps: int = 10,
                     compiled: bool = False) -> tuple[str, dict]:
    """The name of the kernel to use ("sdpa" or a candidate's) and a report: each kernel's time in
    ms, or why it was dropped. `compiled`: check and time each kernel inside torch.compile."""
    device = torch.device(device)
    if candidates is None:
        if device.type != "cuda":
            return "sdpa", {"sdpa": "not measured: the only kernel off CUDA"}
        candidates = cuda_candidates()
    if not candidates:
        return "sdpa", {"sdpa": "not measured: no other kernel available"}
    try:
        # Measuring draws dropout masks and the Triton kernels' seeds from torch's generators: on
        # forks of them, so that a run resumed from a checkpoint (whose random states it restored
        # before measuring) goes on with exactly the masks the uninterrupted run would have drawn.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _measure(batch, heads, length, head_dim, dropout, device, candidates, dtype, reps, compiled)
    except torch.cuda.OutOfMemoryError:
        pass
    # Too big to measure is (about) too big to train: the training step will run out of memory
    # too, and its error says which setting to lower. Until then nothing is lost by taking SDPA.
    # (Freed here, outside the handler, once the exception no longer holds the tensors.)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return "sdpa", {"sdpa": "not measured: out of memory at this shape"}


def _measure(batch, heads, length, head_dim, dropout, device, candidates, dtype, reps, compiled) -> tuple[str, dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(batch, length, 3 * heads * head_dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    upstream = torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype, generator=gen)

    def as_run(kernel: Kernel, p: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """The kernel as the run calls it: on heads split from qkv, compiled if the run compiles
        (p a constant, as the model's dropout is; the shape static). SDPA is one aten call, the
        same kernel compiled or not: it is spared the compilations."""
        def attend(qkv: torch.Tensor) -> torch.Tensor:
            return kernel(*split_heads(qkv, heads), p)

        return torch.compile(attend, dynamic=False) if compiled and kernel is not sdpa else attend

    def ms(kernel: Kernel) -> float:
        attend = as_run(kernel, dropout)
        return forward_backward_ms(lambda: attend(qkv), upstream, reps)

    expected = _output_and_grad(as_run(sdpa, 0.0), qkv, upstream)
    report: dict = {"sdpa": round(ms(sdpa), 4)}
    best, best_ms = "sdpa", report["sdpa"] * MARGIN
    for name, kernel in candidates.items():
        try:
            problem = _mismatch(expected, _output_and_grad(as_run(kernel, 0.0), qkv, upstream))
            if problem:
                report[name] = f"dropped: {problem}"
                continue
            took = ms(kernel)
        except torch.cuda.OutOfMemoryError:
            raise  # the shape is at the edge of memory: SDPA, unmeasured (choose_attention)
        except Exception as e:  # noqa: BLE001 - any failure of a candidate means: do not use it
            report[name] = f"dropped: failed to run ({one_line(e)})"
            continue
        report[name] = round(took, 4)
        if took < best_ms:
            best, best_ms = name, took
    return best, report


def one_line(e: Exception, limit: int = 300) -> str:
    """An exception as one line of the run's log: its type and message, whitespace collapsed; a
    long one keeps both ends, since a Triton compilation error quotes up to 12 lines of the
    kernel's source first and says what is wrong last (cut at 200 characters, the log showed only
    source)."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= limit else f"{text[: limit // 2]} … {text[-limit // 2 :]}"


def describe(choice: str, report: dict, shape: str) -> str:
    """One line for the run's log."""
    parts = [f"{n} {v} ms" if isinstance(v, float) else f"{n} {v}" for n, v in report.items()]
    return f"attention auto at {shape}: using {choice} ({'; '.join(parts)})"


def _output_and_grad(attend, qkv: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    qkv.grad = None
    out = attend(qkv)
    out.backward(upstream)
    # Copies: timing runs later accumulate into the same .grad tensor.
    return [out.detach().float().clone(), qkv.grad.float().clone()]


def _mismatch(expected: list[torch.Tensor], got: list[torch.Tensor]) -> str | None:
    for name, e, g in zip(("output", "gradient"), expected, got):
        if e.shape != g.shape:
            return f"{name} has shape {tuple(g.shape)}, not {tuple(e.shape)}"
        scale = e.abs().max().item() or 1.0
        error = (e - g).abs().max().item() / scale
        if not error <= TOLERANCE:  # NaN fails too
            return f"{name} differs from SDPA's by {error:.2e} of its scale (tolerance {TOLERANCE:.0e})"
    return None


def forward_backward_ms(attend: Callable[[], torch.Tensor], upstream: torch.Tensor, reps: int) -> float:
    """Milliseconds of one forward (`attend()`) + backward (after two untimed runs)."""
    sync = torch.cuda.synchronize if upstream.is_cuda else (lambda: None)
    for _ in range(2):  # compile, autotune, warm caches
        attend().backward(upstream)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        attend().backward(upstream)
    sync()
    return (time.perf_counter() - t0) / reps * 1e3
