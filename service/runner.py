"""The slot runner of continuous batching: tensors only, no bookkeeping of requests.

The decoder batch is a fixed set of slots (rows). Each slot owns its row of the self-attention
cache and of the cross-attention cache; source K/V are written once at admission, and
different source lengths are handled by masks, not by re-padding. Live rows are kept at the
front (rows 0..n-1), so every step works on views, never on copies.
Shapes: L layers, R slots, H heads, T max target length, S max source length, Dh head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.attention import masked_bias
from model.cache import KVCache, move_rows_
from model.transformer import Transformer


class SlotRunner:
    def __init__(self, model: Transformer, slots: int, max_source: int, max_target: int) -> None:
        cfg = model.cfg
        self.model = model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.slots, self.max_source, self.max_target = slots, max_source, max_target
        heads = cfg.decoder_attention_heads
        dh = cfg.d_model // heads
        layers = cfg.decoder_layers
        # Zeros, not empty: masked positions are multiplied by 0 in attention, and 0 * NaN is NaN.
        self.self_k = torch.zeros(layers, slots, heads, max_target, dh, dtype=self.dtype, device=self.device)
        self.self_v = torch.zeros_like(self.self_k)
        self.cross_k = torch.zeros(layers, slots, heads, max_source, dh, dtype=self.dtype, device=self.device)
        self.cross_v = torch.zeros_like(self.cross_k)
        self.src_len = torch.zeros(slots, dtype=torch.long, device=self.device)  # per slot
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)  # next position to write
        self.tokens = torch.zeros(slots, dtype=torch.long, device=self.device)  # last token of each slot
        self.arange_t = torch.arange(max_target, device=self.device)
        self.arange_s = torch.arange(max_source, device=self.device)

    @property
    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.self_k, self.self_v, self.cross_k, self.cross_v))

    @torch.inference_mode()
    def admit(self, sources: list[list[int]], copies: list[int], first_row: int) -> None:
        """Encode `sources` together and write each one's cross K/V into `copies[i]` consecutive
        slots starting at `first_row` (a beam of k takes k slots with the same source)."""
        cfg = self.model.cfg
        width = max(map(len, sources))
        src = torch.full((len(sources), width), cfg.pad_token_id, dtype=torch.long)
        for i, ids in enumerate(sources):
            src[i, : len(ids)] = torch.tensor(ids)
        src = src.to(self.device)
        bias = self.model.source_bias(src)
        memory = self.model.encode_tokens(src, bias)
        rows = torch.arange(len(sources), device=self.device).repeat_interleave(
            torch.tensor(copies, device=self.device))
        dest = slice(first_row, first_row + rows.numel())
        k, v = self.model.cross_kv(memory, bias)  # (L, N, H, S, Dh)
        self.cross_k[:, dest, :, :width] = k[:, rows]
        self.cross_v[:, dest, :, :width] = v[:, rows]
        lengths = torch.tensor([len(s) for s in sources], device=self.device)[rows]
        self.src_len[dest] = lengths
        self.positions[dest] = 0
        self.tokens[dest] = cfg.decoder_start_token_id

    @torch.inference_mode()
    def decode(self, n: int) -> Tensor:
        """One step for live rows 0..n-1 -> logits (n, V). Each row attends to its own prefix and source."""
        pos = self.positions[:n]
        t = int(pos.max()) + 1
        s = int(self.src_len[:n].max())
        self_bias = masked_bias(self.arange_t[None, :t] > pos[:, None], self.dtype)  # (n, 1, 1, t)
        src_bias = masked_bias(self.arange_s[None, :s] >= self.src_len[:n, None], self.dtype)  # (n, 1, 1, s)
        view = KVCache(self.self_k[:, :n, :, :t], self.self_v[:, :n, :, :t], self.cross_k[:, :n, :, :s],
                       self.cross_v[:, :n, :, :s], src_bias)
        logits = self.model.decode_step(self.tokens[:n], pos, view, self_bias)
        self.positions[:n] += 1
        return logits

    @torch.inference_mode()
    def rearrange(self, order: Tensor) -> None:
        """Row i becomes old row order[i], for i < len(order): drops finished rows (compaction) and
        reorders beams, in one gather of the live part of every per-row buffer (rows that stay
        where they are are not copied)."""
        n = order.numel()
        t = int(self.positions[order].max()) if n else 0
        s = int(self.src_len[order].max()) if n else 0
        if n:
            move_rows_(((self.self_k, t), (self.self_v, t), (self.cross_k, s), (self.cross_v, s)), order)
        for buf in (self.src_len, self.positions, self.tokens):
            buf[:n] = buf[order]

