"""The GPT of the reference code (a minGPT), in one file.

Pre-LN transformer: token + learned position embeddings, `n_layers` blocks of causal
self-attention and a GELU MLP, a final LayerNorm and an untied linear head. Module names follow
the reference (`transformer.token_embedder`, `transformer.h.0.attn.c_attn`, `lm_head`, ...), so
its state dicts load here (its causal-mask buffer `bias` aside: pass strict=False).

Attention has several implementations with the same weights:
- "auto" (default): "sdpa", unless the trainer measured another kernel faster at the run's shape
  on CUDA and switched to it (see attention_choice.py);
- "sdpa": `F.scaled_dot_product_attention(is_causal=True)`, which dispatches to a fused
  kernel (FlashAttention on CUDA in bf16/fp16, a memory-efficient or math kernel elsewhere);
- "flex": FlexAttention with a causal block mask, turned into a fused Triton kernel by
  torch.compile on CUDA (eager elsewhere, forward only on CPU). It has no dropout on the attention
  weights, so it requires `dropout` 0, and "auto" does not consider it: on an H200 SDPA's flash
  kernel measured faster than FlexAttention for the paper's shapes (DESIGN §7: 0.78 vs 0.90 ms);
- "triton": our own fused kernels (FlashAttention-2 forward and backward, with dropout on the
  attention weights), in `triton_attention.py`; CUDA only (or Triton's interpreter, for tests).
  "auto" takes it where it matches SDPA and is measured faster at the run's shape;
- "plain": the masked softmax written out, as the reference did; kept as the ground truth the
  fused paths are tested against.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn as nn
from torch.nn import functional as F

from arrows.errors import InputError
from arrows.models.head_loss import HEAD_LOSSES, head_and_loss, head_logits

ATTENTION_IMPLS = ("auto", "sdpa", "flex", "triton", "plain")

_flex_masks: dict = {}  # (T, device) -> causal BlockMask, built once
_flex_kernel = None  # flex_attention, compiled on first CUDA use


def flex_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention through FlexAttention; compiled into a fused kernel on CUDA."""
    global _flex_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T = q.shape[-2]
    key = (T, str(q.device))
    if key not in _flex_masks:
        _flex_masks[key] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=q.device)
    if q.is_cuda:
        if _flex_kernel is None:
            _flex_kernel = torch.compile(flex_attention)
        return _flex_kernel(q, k, v, block_mask=_flex_masks[key])
    return flex_attention(q, k, v, block_mask=_flex_masks[key])


def triton_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention through arrows' own Triton kernels (imported when first used: Triton is
    needed only for this path)."""
    from arrows.models.triton_attention import causal_attention

    return causal_attention(q, k, v, dropout_p)


def split_heads(qkv: torch.Tensor, n_heads: int) -> list[torch.Tensor]:
    """The (B, T, 3C) output of the key, query, value projection -> q, k, v, each (B, nh, T, hs):
    heads become a batch dimension (strided views, nothing is copied)."""
    B, T, three_c = qkv.shape
    return [t.view(B, T, n_heads, -1).transpose(1, 2) for t in qkv.split(three_c // 3, dim=2)]


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, n_heads: int, dropout: float, attention_impl: str):
        super().__init__()
        # key, query, value projections for all heads at once
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim)
        self.c_proj = nn.Linear(embed_dim, embed_dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_heads = n_heads
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.attention_impl = attention_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = split_heads(self.c_attn(x), self.n_heads)

        if self.attention_impl in ("sdpa", "auto"):
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        elif self.attention_impl == "flex":
            y = flex_causal_attention(q, k, v)
        elif self.attention_impl == "triton":
            y = triton_causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            # (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T); position t sees positions <= t
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, embed_dim: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(mlp_ratio * embed_dim)
        self.c_fc = nn.Linear(embed_dim, hidden)
        self.act = nn.GELU()
        self.c_proj = nn.Linear(hidden, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LN transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, embed_dim: int, n_heads: int, mlp_ratio: float, dropout: float, attention_impl: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, n_heads, dropout, attention_impl)
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.mlp = MLP(embed_dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT language model. Sizes of the paper (vocab 50257, attn_length 256):
    nano 3×48 (3 heads) 4.9M, micro 4×128 (4), mini 6×192 (6), small 10×380 (10) 55.7M,
    gpt1 12×768 (12), medium 24×1024 (16) 405.5M, XL 48×1600 (25) 1636.8M parameters.
    """

    model_type = "gpt"

    def __init__(
        self,
        vocab_size: int,
        n_layers: int,
        n_heads: int,
        embed_dim: int,
        attn_length: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        embd_dropout: float | None = None,
        attention_impl: str = "auto",
        head_loss: str = "plain",
    ):
        super().__init__()
        if embed_dim % n_heads != 0:
            raise InputError(f"model_params: n_heads ({n_heads}) must divide embed_dim ({embed_dim})")
        if attention_impl not in ATTENTION_IMPLS:
            raise InputError(f"model_params: attention_impl must be one of {ATTENTION_IMPLS}, not {attention_impl!r}")
        if head_loss not in HEAD_LOSSES:
            raise InputError(f"model_params: head_loss must be one of {HEAD_LOSSES}, not {head_loss!r}")
        if attention_impl == "triton":
            require_triton()
        if attention_impl == "flex" and dropout > 0:
            raise InputError(f"model_params: attention 'flex' has no dropout on attention weights; set dropout to 0 (now {dropout}) or use 'sdpa'")
        # Everything needed to build this model again (checkpoints store it).
        self.config = dict(
            model_type=self.model_type, vocab_size=vocab_size, n_layers=n_layers, n_heads=n_heads,
            embed_dim=embed_dim, attn_length=attn_length, mlp_ratio=mlp_ratio, dropout=dropout,
            embd_dropout=embd_dropout, attention_impl=attention_impl, head_loss=head_loss,
        )
        self.head_loss = head_loss
        self.attn_length = attn_length
        if embd_dropout is None:  # the reference's convention
            embd_dropout = dropout

        self.transformer = nn.ModuleDict(dict(
            token_embedder=nn.Embedding(vocab_size, embed_dim),
            position_embedder=nn.Embedding(attn_length, embed_dim),
            drop=nn.Dropout(embd_dropout),
            h=nn.ModuleList([Block(embed_dim, n_heads, mlp_ratio, dropout, attention_impl) for _ in range(n_layers)]),
            ln_f=nn.LayerNorm(embed_dim),
        ))
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)

        # minGPT's init; the residual projections are scaled down by 1/sqrt(2·n_layers) so that the
        # residual stream's variance does not grow with depth (GPT-2 paper).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_attention_impl(self, impl: str) -> None:
        """Switch every layer to another attention implementation (the weights are the same)."""
        if impl not in ATTENTION_IMPLS:
            raise InputError(f"attention_impl must be one of {ATTENTION_IMPLS}, not {impl!r}")
        if impl == "triton":
            require_triton()
        for block in self.transformer.h:
            block.attn.attention_impl = impl
        self.config["attention_impl"] = impl

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits; T <= attn_length."""
        return head_logits(self.hidden(idx), self.lm_head)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, embed_dim): the final states that the head turns into logits."""
        B, T = idx.shape
        if T > self.attn_length:
            raise InputError(f"cannot forward a sequence of length {T}: attn_length is {self.attn_length}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.token_embedder(idx) + self.transformer.position_embedder(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Returns (logits (B, T, vocab), loss): loss is the mean cross-entropy over all positions
        in nats/token, or None without targets. With `head_loss="chunked"` and targets, the head
        and loss are fused and the logits are None."""
        return head_and_loss(self.hidden(idx), self.lm_head, targets, self.head_loss)

    def loss_per_position(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) cross-entropy of each target token, in nats."""
        return per_position_loss(self.logits(idx), targets)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend idx (B, T), which begins with the BOS, by max_new_tokens sampled tokens, feeding
        each back in. A context longer than attn_length is read as a training window: the BOS, then
        the last attn_length − 1 tokens (every window the model trained on began with the BOS: cut
        to its last attn_length tokens, the context began with a token it never saw first).
        temperature=0 picks the most likely token. Call model.eval() first (dropout)."""
        check_sampling(idx, max_new_tokens, temperature, top_k)
        for _ in range(max_new_tokens):
            T = idx.shape[1]
            context = idx if T <= self.attn_length else torch.cat((idx[:, :1], idx[:, T - (self.attn_length - 1):]), dim=1)
            logits = self.logits(context)
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def require_triton() -> None:
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        raise InputError("model_params: attention 'triton' needs the triton package (pip install triton; "
                         "it comes with torch's CUDA wheels on Linux), or use attention 'sdpa'")


def per_position_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each target under (B, T, V) logits, shape (B, T); in fp32."""
    B, T, V = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none")
    return losses.view(B, T)


def check_sampling(idx, max_new_tokens, temperature, top_k) -> None:
    """Refuse generation settings that would fail deep inside torch (top_k 0, a 1-D prompt) or
    sample silently from something else than asked (a negative temperature inverts the
    distribution)."""
    if not isinstance(idx, torch.Tensor) or idx.ndim != 2 or idx.shape[1] == 0 or idx.is_floating_point() or idx.is_complex():
        got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else f"a {type(idx).__name__}"
        raise InputError(f"idx must be a (batch, tokens) tensor of integer ids with at least one token "
                         f"(start from the BOS id, e.g. torch.tensor([[0]])), not {got}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer of at least 0, not {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not 0 <= temperature < math.inf:
        raise InputError(f"temperature must be a finite number of at least 0 (0: the most likely token), not {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise InputError(f"top_k must be None or an integer of at least 1, not {top_k!r}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator=None) -> torch.Tensor:
    """Draw one token per row of (B, V) logits -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
