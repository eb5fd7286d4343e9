"""attend_step: a decoding step's attention, by SDPA or by two matmuls depending on size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.attention import MATMUL_ATTENTION_PAIRS, attend_step, masked_bias


@pytest.mark.parametrize("rows,heads,queries", [(MATMUL_ATTENTION_PAIRS // 4, 4, 1), (64, 8, 4), (3, 4, 4), (3, 4, 1)])
def test_step_attention_equals_sdpa(rows, heads, queries):
    gen = torch.Generator().manual_seed(rows)
    q = torch.randn(rows, heads, queries, 64, generator=gen)
    k = torch.randn(rows, heads, 40, 64, generator=gen)[:, :, :21]  # views of a cache, as in a step
    v = torch.randn(rows, heads, 40, 64, generator=gen)[:, :, :21]
    pad = torch.arange(21)[None, :] >= torch.randint(5, 22, (rows, 1), generator=gen)
    for bias in (None, masked_bias(pad, q.dtype)):
        got = attend_step(q, k, v, bias)
        assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), atol=1e-5)
