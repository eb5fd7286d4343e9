"""Sinusoidal position encodings in Marian's layout (sin in the first half, cos in the second)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def sinusoids(positions: int, dim: int) -> Tensor:
    """(positions, dim) table; matches Hugging Face MarianSinusoidalPositionalEmbedding exactly.

    Computed in float64 with numpy, as the reference does, so the fp32 table is bit-identical.
    """
    pos = np.arange(positions)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    half = (dim + 1) // 2
    table = np.empty((positions, dim), dtype=np.float32)
    table[:, :half] = np.sin(angle[:, 0::2])
    table[:, half:] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table)
