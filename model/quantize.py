"""Reduced precision on CPU: int8 dynamic quantization of every Linear layer.

Weights are stored as int8 with a per-tensor scale; activations are quantized on the fly at
each matmul (fbgemm kernels on x86). Embeddings and layer norms stay fp32. The output
projection is quantized too (it is the largest matmul per decoder step), which unties it from
the embedding matrix: fine for inference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from model.packed import unpack_linears
from model.transformer import Transformer


def quantize_int8(model: Transformer) -> Transformer:
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on CPU only; on CUDA use float16")
    plain = copy.deepcopy(model).float()
    unpack_linears(plain)  # quantize_dynamic replaces nn.Linear layers, not their packed form
    quantized = torch.ao.quantization.quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)
    quantized.packed_head = None  # the int8 output projection replaces the packed fp32 one
    return quantized.eval()
