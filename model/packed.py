"""Linear layers through oneDNN with weights packed once, for fp32 inference on CPU.

PyTorch's fp32 Linear on CPU calls MKL's sgemm, which re-packs the weight at every call and, on
AMD CPUs, does not use AVX-512. oneDNN with the weight reordered once into its blocked layout
is faster for every shape of a decoding step (2 threads, 16-2,304 rows; measured 2026-11-29):
- on an AVX2-only CPU, for the output projection (few rows x large vocabulary): 8003 x 256 at
  4 rows 2.6 ms -> 0.25-0.8 ms, 64 rows 7.8 -> 2.7-4.3 ms; the other layers: within noise;
- on an AVX-512 CPU, every layer: 1.8-2.3x (256 -> 1024 at 64 rows 186 -> 82 us), the output
  projection 2.0-3.2x.
So the output projection is always packed, the other Linear layers where AVX-512 is in use.
Packing costs one more copy of each packed weight: the output projection's (8 MB for the
embedded model, 119 MB for opus-mt shapes), and with every layer packed the model's fp32 weights
once more (~33 MB embedded, ~300 MB opus-mt). Sums come out in another order, so outputs differ from
MKL's in the last bits (~1e-6); tests/model/test_packed.py holds the translations token-identical
on held-out sentences.

At one or two rows (the tail of a greedy batch, where most rows have finished), oneDNN's call
costs ~10 us whatever the layer's size (a 16 x 16 layer: 11 us, where MKL takes 2 us): for layers
of up to 1 MB that is most of the call. There the decoder's layers multiply by a second copy of
the weight split in two halves by output features, one batched matmul, which MKL runs a half per
thread (1 row, 2 threads, warm: 256 x 256 17 -> 8 us, 256 x 1024 20 -> 14 us; 512 x 2048: 39 vs
38 us, so larger layers stay packed). The embedded model's step at 1 row 0.68 -> 0.52 ms, at 2
rows 0.72 -> 0.66 ms; at 3 rows MKL's gemm is no faster (0.76 vs 0.76 ms), so it stops at 2
(measured 2026-11-29, AVX-512, 2 threads). The copy costs the small decoder layers' weights once
more (~10 MB embedded, ~9 MB of opus-mt's 512 x 512 layers).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

ROWS_HINT = 16  # oneDNN picks its blocked layout for this many rows; it serves any other count
FEW_ROWS = 2  # up to this many rows a small layer multiplies by its split copy (see above)
SPLIT_MAX_WEIGHT = 1 << 18  # elements (1 MB of fp32): the largest layer that gets a split copy
SPLIT_PARTS = 2


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def packs_every_layer() -> bool:
    """Whether the layers other than the output projection gain from packing (see above)."""
    return available() and torch.backends.cpu.get_cpu_capability() == "AVX512"


def _pack(weight: Tensor) -> Tensor:
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"packing is for float32 on CPU; got {weight.dtype} on {weight.device.type}")
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def _split(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """The weight as (parts, in, out / parts) and the bias as (parts, 1, out / parts), for layers
    small enough to gain from them."""
    out_features, in_features = weight.shape
    if weight.numel() > SPLIT_MAX_WEIGHT or out_features % SPLIT_PARTS:
        return None
    parts = weight.detach().view(SPLIT_PARTS, -1, in_features).transpose(1, 2).contiguous()
    bias = weight.new_zeros(out_features) if bias is None else bias.detach()
    return parts, bias.reshape(SPLIT_PARTS, 1, -1).contiguous()


def _apply_split(x: Tensor, split: tuple[Tensor, Tensor]) -> Tensor:
    weight, bias = split
    rows = x.shape[0]
    y = torch.baddbmm(bias, x.expand(weight.shape[0], rows, x.shape[1]), weight)  # (parts, rows, out / parts)
    return y.view(1, -1) if rows == 1 else y.transpose(0, 1).reshape(rows, -1)


def _apply(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int,
           split: tuple[Tensor, Tensor] | None = None) -> Tensor:
    if x.dim() == 2 and x.is_contiguous():  # a decoding step's rows: the one call and nothing around it
        if split is not None and x.shape[0] <= FEW_ROWS:
            return _apply_split(x, split)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return y.view(*x.shape[:-1], out_features)


class PackedLinear(nn.Linear):
    """An nn.Linear whose forward runs on a packed snapshot of its weight. It keeps the layer's own
    parameters (state_dict, saving and parameter counts are unchanged): pack once they are final."""

    @classmethod
    def of(cls, linear: nn.Linear, few_rows: bool = False) -> PackedLinear:
        """`few_rows`: the layer also runs decoding steps, so small layers keep a split copy for
        steps of one or two rows (see above)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.packed = _pack(linear.weight)
        layer.plain_bias = None if linear.bias is None else linear.bias.detach()
        layer.split = _split(linear.weight, linear.bias) if few_rows else None
        return layer

    def __deepcopy__(self, memo: dict) -> PackedLinear:
        # oneDNN's packed tensor has no storage to copy: copy the layer and pack the copy.
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        plain.weight = copy.deepcopy(self.weight, memo)
        plain.bias = copy.deepcopy(self.bias, memo)
        return PackedLinear.of(plain, few_rows=self.split is not None)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cpu and x.dtype == torch.float32:  # the cheapest test (a decoding step makes ~20 calls)
            return _apply(x, self.packed, self.plain_bias, self.out_features, self.split)
        return super().forward(x)


def pack_linears(module: nn.Module, few_rows: bool = False) -> None:
    """Replace every nn.Linear under `module` by its PackedLinear (`few_rows`: see PackedLinear.of)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear.of(child, few_rows))
        else:
            pack_linears(child, few_rows)


def unpack_linears(module: nn.Module) -> None:
    """The reverse of pack_linears (int8 quantization looks for plain nn.Linear layers)."""
    for name, child in module.named_children():
        if isinstance(child, PackedLinear):
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            plain.weight, plain.bias = child.weight, child.bias
            setattr(module, name, plain)
        else:
            unpack_linears(child)


class PackedHead(nn.Module):
    """The output projection, packed, with Marian's final_logits_bias added by oneDNN while it
    writes the logits (which spares the step a pass over them). It holds plain tensors, not
    parameters, so the checkpoint (and the tie to the embeddings) is unchanged."""

    def __init__(self, linear: nn.Linear, extra_bias: Tensor | None = None) -> None:
        super().__init__()
        self.weight = linear.weight.detach()  # the dense original (shared, not copied): deepcopy re-packs from it
        self.packed = _pack(self.weight)
        biases = [b.detach() for b in (linear.bias, extra_bias) if b is not None and bool(b.any())]
        self.bias = sum(biases[1:], biases[0]).contiguous() if biases else None  # all zeros: nothing to add
        self.out_features = linear.out_features

    def __deepcopy__(self, memo: dict) -> PackedHead:
        linear = nn.Linear(self.weight.shape[1], self.out_features, bias=False)
        linear.weight = nn.Parameter(copy.deepcopy(self.weight, memo), requires_grad=False)
        return PackedHead(linear, None if self.bias is None else copy.deepcopy(self.bias, memo))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., D) -> (..., V), biases included."""
        return _apply(x, self.packed, self.bias, self.out_features)
