"""The GRU and LSTM language models of the reference code.

embedding -> dropout -> nn.GRU / nn.LSTM (n_layers, hidden = embed_dim) -> LayerNorm -> linear head.
Weights keep PyTorch's default initialisation, as in the reference. Module names follow the
reference (`token_embedder`, `gru` / `lstm`, `ln_f`, `lm_head`), so its state dicts load here.

A recurrent model has no window of its own: `desired_attn_length` (the reference's key) or
`attn_length` only records the training window length, kept as `model.attn_length`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from arrows.errors import InputError
from arrows.models.gpt import check_sampling, per_position_loss, sample_next
from arrows.models.head_loss import HEAD_LOSSES, head_and_loss, head_logits


class RecurrentLM(nn.Module):
    """Shared body of GRU and LSTM; a subclass sets `model_type` and `rnn_class`."""

    model_type: str
    rnn_class: type

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        n_layers: int = 1,
        dropout: float = 0.1,
        embd_dropout: float | None = None,
        desired_attn_length: int | None = None,
        attn_length: int | None = None,
        head_loss: str = "plain",
    ):
        super().__init__()
        if head_loss not in HEAD_LOSSES:
            raise InputError(f"model_params: head_loss must be one of {HEAD_LOSSES}, not {head_loss!r}")
        if desired_attn_length is not None and attn_length is not None and desired_attn_length != attn_length:
            raise InputError(
                f"model_params: desired_attn_length ({desired_attn_length}) and attn_length ({attn_length}) "
                "disagree; give one of them"
            )
        window = desired_attn_length if desired_attn_length is not None else attn_length
        self.config = dict(
            model_type=self.model_type, vocab_size=vocab_size, n_layers=n_layers, embed_dim=embed_dim,
            dropout=dropout, embd_dropout=embd_dropout, desired_attn_length=window, head_loss=head_loss,
        )
        self.head_loss = head_loss
        self.attn_length = window
        if embd_dropout is None:  # the reference's convention
            embd_dropout = dropout

        self.token_embedder = nn.Embedding(vocab_size, embed_dim)
        self.embd_dropout = nn.Dropout(embd_dropout)
        # The RNN applies `dropout` between its layers only, so with one layer it does nothing;
        # pass 0 then (torch warns about a dropout it would ignore).
        rnn = self.rnn_class(
            input_size=embed_dim,
            hidden_size=embed_dim,
            num_layers=n_layers,
            batch_first=True,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.add_module(self.model_type, rnn)  # named `gru` / `lstm` like the reference
        self.ln_f = nn.LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)

    @property
    def rnn(self) -> nn.Module:
        return getattr(self, self.model_type)

    def run(self, idx: torch.Tensor, state=None):
        """(B, T) token ids and an optional recurrent state -> ((B, T, vocab) logits, new state).
        The state is h (GRU) or (h, c) (LSTM), each (n_layers, B, embed_dim); None = zeros."""
        h, state = self.hidden(idx, state)
        return head_logits(h, self.lm_head), state

    def hidden(self, idx: torch.Tensor, state=None):
        """(B, T) token ids -> ((B, T, embed_dim) final states that the head turns into logits, new state)."""
        x = self.embd_dropout(self.token_embedder(idx))
        x, state = self.rnn(x, state)
        return self.ln_f(x), state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Returns (logits (B, T, vocab), loss): loss is the mean cross-entropy over all positions
        in nats/token, or None without targets. With `head_loss="chunked"` and targets, the head
        and loss are fused and the logits are None."""
        return head_and_loss(self.hidden(idx)[0], self.lm_head, targets, self.head_loss)

    def loss_per_position(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) cross-entropy of each target token, in nats."""
        logits, _ = self.run(idx)
        return per_position_loss(logits, targets)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens. The context is read once, then only
        the recurrent state and the last token are fed in at each step. temperature=0 picks the
        most likely token. Call model.eval() first (dropout)."""
        check_sampling(idx, max_new_tokens, temperature, top_k)
        logits, state = self.run(idx)
        for step in range(max_new_tokens):
            if step > 0:  # feed the token just drawn
                logits, state = self.run(idx[:, -1:], state)
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


class GRU(RecurrentLM):
    model_type = "gru"
    rnn_class = nn.GRU


class LSTM(RecurrentLM):
    model_type = "lstm"
    rnn_class = nn.LSTM
