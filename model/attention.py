"""Multi-head attention (Vaswani et al. 2017, section 3.2), with fused projections.

Shapes: B batch, S source length, T target length, H heads, Dh head dim, D model dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, Dh)


def merge_heads(x: Tensor) -> Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, causal: bool = False,
           record: list[Tensor] | None = None, dropout: float = 0.0) -> Tensor:
    """Scaled dot-product attention; `bias` is additive (0 or -inf), broadcast to (B, H, Tq, Tk).

    With `record`, the softmax weights are computed explicitly and appended to it (for people
    who want to look at them); without, the fused kernel runs and nothing is kept."""
    if record is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, dropout_p=dropout)
    if causal:
        t = q.shape[-2]
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        bias = masked_bias(future[None], q.dtype)[0] if bias is None else bias + masked_bias(future[None], q.dtype)[0]
    weights = attention_weights(q, k, bias)
    record.append(weights)
    return weights.to(v.dtype) @ v


MATMUL_ATTENTION_PAIRS = 256  # (row, head) pairs from which a CPU decoding step attends with two matmuls


def attend_step(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """`attend` for a decoding step's queries: one per row, or the K beams of a source (N, H, K, Dh).

    On CPU, SDPA's kernel costs more than two batched matmuls for several queries per (row, head)
    (beam 4 cross-attention, 4 heads: 16 sources 104 -> 25 us, 64 sources 365 -> 69 us), and for
    one query once there are many pairs (4 heads x 64 rows 65 -> 46 us, x 256 rows 261 -> 163 us;
    a beam 4 x 64 batch's steps 3-7% faster); with fewer, SDPA is as fast or faster (measured
    2026-11-29, 2 threads)."""
    b, heads, queries = q.shape[:3]
    if q.device.type != "cpu" or (queries == 1 and b * heads < MATMUL_ATTENTION_PAIRS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if bias is not None:
        scores += bias
    return torch.matmul(scores.softmax(-1), v)


def attention_weights(q: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """The softmax matrix (B, H, Tq, Tk) that `attend` applies, in float32."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    return scores.float().softmax(-1)


class SelfAttention(nn.Module):
    """Q, K and V come from the same sequence: one (D, 3D) matmul instead of three."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: Tensor, bias: Tensor | None = None, causal: bool = False,
                record: list[Tensor] | None = None) -> Tensor:
        q, k, v = self.project(x)
        y = attend(q, k, v, bias, causal, record, self.dropout if self.training else 0.0)
        return self.out(merge_heads(y))

    def tokens(self, x: Tensor, real: Tensor, bias: Tensor | None) -> Tensor:
        """`forward` for inference on a batch's tokens only: x (tokens, D), in the order of the
        True entries of `real` (B, S) -> (tokens, D). The projections skip the padding; attention
        runs on the padded (B, H, S, Dh) layout it needs, with zeros at padding (masked by `bias`)."""
        b, s = real.shape
        qkv = x.new_zeros((b, s, 3 * x.shape[1]))
        qkv[real] = self.qkv.forward(x)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        return self.out.forward(merge_heads(attend(q, k, v, bias))[real])


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder output (computed once per source)."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)  # (B, H, S, Dh) each

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
                record: list[Tensor] | None = None) -> Tensor:
        q = split_heads(self.q(x), self.heads)
        y = attend(q, k, v, bias, False, record, self.dropout if self.training else 0.0)
        return self.out(merge_heads(y))


def masked_bias(pad_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, S) bool, True where padded -> additive (B, 1, 1, S) bias."""
    bias = torch.zeros(pad_mask.shape, dtype=dtype, device=pad_mask.device)
    bias.masked_fill_(pad_mask, float("-inf"))
    return bias[:, None, None, :]
