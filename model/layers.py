"""Encoder and decoder layers, post-norm as in the paper and in Marian.

Shapes: B batch, S source length, T target length, D model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import CrossAttention, SelfAttention, attend_step


def activation(name: str):
    if name in ("swish", "silu"):
        return F.silu
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    # gelu_new / gelu_fast / gelu_pytorch_tanh are all the tanh approximation.
    return lambda x: F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, act: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ffn)
        self.fc2 = nn.Linear(d_ffn, d_model)
        self.act = activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))

    def step(self, x: Tensor) -> Tensor:
        """`forward` for inference, as a decoding step runs it (see DecoderLayer.step)."""
        return self.fc2.forward(self.act(self.fc1.forward(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ffn: int, act: str, dropout: float, attn_dropout: float,
                 act_dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, heads, attn_dropout)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, act, act_dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, src_bias: Tensor, record: dict[str, list[Tensor]] | None = None) -> Tensor:
        rec = record["encoder"] if record is not None else None
        x = self.self_attn_norm(x + self.drop(self.self_attn(x, src_bias, record=rec)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))

    def tokens(self, x: Tensor, real: Tensor, src_bias: Tensor) -> Tensor:
        """`forward` for inference on a batch's source tokens only: x (tokens, D), in the order of
        the True entries of `real` (B, S) (see SelfAttention.tokens)."""
        x = self.self_attn_norm.forward(self.self_attn.tokens(x, real, src_bias).add_(x))
        return self.ffn_norm.forward(self.ffn.step(x).add_(x))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ffn: int, act: str, dropout: float, attn_dropout: float,
                 act_dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, heads, attn_dropout)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = CrossAttention(d_model, heads, attn_dropout)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ffn, act, act_dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, src_bias: Tensor,
                record: dict[str, list[Tensor]] | None = None) -> Tensor:
        """Teacher-forced pass over the whole target (training, attention maps, the no-cache reference)."""
        rec_self, rec_cross = (record["decoder"], record["cross"]) if record is not None else (None, None)
        x = self.self_attn_norm(x + self.drop(self.self_attn(x, causal=True, record=rec_self)))
        k, v = self.cross_attn.project_memory(memory)
        x = self.cross_attn_norm(x + self.drop(self.cross_attn(x, k, v, src_bias, record=rec_cross)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))

    def step(self, x: Tensor, pos: int | Tensor, self_k: Tensor, self_v: Tensor, cross_k: Tensor, cross_v: Tensor,
             src_bias: Tensor, self_bias: Tensor | None = None) -> Tensor:
        """One new position for every row; x: (B, D). Writes this position's K/V into the cache.

        `pos` is one position for all rows, or (B,) positions (continuous batching: rows started
        at different times); then `self_bias` masks each row's cache beyond its own position.
        Written flat, on (B, D) rows with views for heads and cache writes: the step runs once per
        token, and at a few rows its Python and dispatch overhead is a good part of its time. For
        the same reason it calls its layers' `forward` directly (nn.Module's call machinery, hooks
        and all, costs ~1 us a call, and a step makes 30-60 of them) and adds residuals in place
        into the fresh output of the layer before (the same sums: addition is commutative): the
        embedded model's step at 1 row ~0.51 -> ~0.48 ms, at 4 rows 0.80 -> 0.76 ms (in-process
        A/B, 11 rounds, 2026-11-29)."""
        b, heads = x.shape[0], self.self_attn.heads
        qkv = self.self_attn.qkv.forward(x).view(b, 3, heads, -1)  # (B, 3, H, Dh)
        if isinstance(pos, int):
            self_k[:, :, pos] = qkv[:, 1]
            self_v[:, :, pos] = qkv[:, 2]
            self_k, self_v = self_k[:, :, : pos + 1], self_v[:, :, : pos + 1]
        else:
            rows = torch.arange(b, device=x.device)
            self_k[rows, :, pos] = qkv[:, 1]
            self_v[rows, :, pos] = qkv[:, 2]
        h = attend_step(qkv[:, 0, :, None], self_k, self_v, self_bias)  # (B, H, 1, Dh)
        x = self.self_attn_norm.forward(self.self_attn.out.forward(h.view(b, -1)).add_(x))
        h = self._cross_step(x, cross_k, cross_v, src_bias)
        x = self.cross_attn_norm.forward(self.cross_attn.out.forward(h).add_(x))
        return self.ffn_norm.forward(self.ffn.step(x).add_(x))

    def _cross_step(self, x: Tensor, cross_k: Tensor, cross_v: Tensor, src_bias: Tensor) -> Tensor:
        """Cross-attention of one new position (B, D) -> (B, D). When the cache holds one source per
        group of rows (beams: B = N x K), each source's K rows attend to it as K queries."""
        b, sources, heads = x.shape[0], cross_k.shape[0], self.cross_attn.heads
        q = self.cross_attn.q.forward(x).view(sources, b // sources, heads, -1).transpose(1, 2)  # (N, H, K, Dh)
        return attend_step(q, cross_k, cross_v, src_bias).transpose(1, 2).reshape(b, -1)
