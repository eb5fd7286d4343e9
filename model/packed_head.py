"""The output projection through oneDNN with a pre-packed weight, for fp32 decoding on CPU.

The output projection (D x V) is the largest matmul of a decoding step, done with a handful of
rows (live sentences x beams). For that shape MKL's sgemm is slow on this AMD CPU; oneDNN with
the weight reordered once into its blocked layout is 1.8-10x faster (measured, 2 threads, 8003 x
256: 4 rows 2.6 ms -> 0.25-0.8 ms, 64 rows 7.8 -> 2.7-4.3 ms; 58101 x 512 at 16 rows 40 -> 16 ms).
The packed copy costs the weight's size once more in memory (8 MB for the embedded model, 119 MB
for opus-mt shapes). Sums come out in another order, so logits differ from MKL's in the last bits
(~1e-5); tests/model/test_packed_head.py holds the outputs token-identical on held-out sentences.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

ROWS_HINT = 16  # oneDNN picks its blocked layout for this many rows; it serves any other count


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedHead(nn.Module):
    """A snapshot of `linear`'s weight in oneDNN's layout: build it after the weights are final."""

    def __init__(self, linear: nn.Linear, extra_bias: Tensor | None = None) -> None:
        """`extra_bias` (V,) is added too (Marian's final_logits_bias): oneDNN adds it while writing
        the output, which spares the step a pass over the (rows x V) logits. All zeros: skipped."""
        super().__init__()
        weight = linear.weight.detach()
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            raise ValueError(f"packing is for float32 on CPU; got {weight.dtype} on {weight.device.type}")
        self.weight = weight  # the dense original (shared, not copied): deepcopy re-packs from it
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
        biases = [b.detach() for b in (linear.bias, extra_bias) if b is not None and bool(b.any())]
        self.bias = sum(biases[1:], biases[0]).contiguous() if biases else None
        self.out_features = linear.out_features

    def __deepcopy__(self, memo: dict) -> PackedHead:
        # oneDNN's packed tensor has no storage to copy: pack the copied weight again.
        linear = nn.Linear(self.weight.shape[1], self.out_features, bias=False)
        linear.weight = nn.Parameter(copy.deepcopy(self.weight, memo), requires_grad=False)
        return PackedHead(linear, None if self.bias is None else copy.deepcopy(self.bias, memo))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., D) -> (..., V), biases included."""
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)
