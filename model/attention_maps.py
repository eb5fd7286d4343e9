"""What the model attended to, for one translation: encoder self-attention, decoder
self-attention and cross-attention of every layer and head.

Computed after decoding by one teacher-forced pass over the chosen hypothesis, so normal
decoding pays nothing for it. For each generated token the cross-attention row is the one the
decoder used when it predicted that token (query = the position before it), which is what
transformers' `output_attentions=True` reports for the same tokens, also under beam search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.transformer import Transformer


@dataclass
class AttentionMaps:
    encoder: Tensor  # (L_enc, H, S, S): row i, how source token i attends to the source
    decoder: Tensor  # (L_dec, H, T, T): causal self-attention of the target
    cross: Tensor  # (L_dec, H, T, S): row t, the source attention that produced target token t


@torch.inference_mode()
def attention_maps(model: Transformer, source: list[int], generated: list[int]) -> AttentionMaps:
    """`source` ids (</s> included) and `generated` ids (EOS included) of one sentence."""
    device = next(model.parameters()).device
    src = torch.tensor([source], device=device)
    tgt_in = torch.tensor([[model.cfg.decoder_start_token_id, *generated[:-1]]], device=device)
    record: dict[str, list[Tensor]] = {"encoder": [], "decoder": [], "cross": []}
    model(src, tgt_in, record)
    return AttentionMaps(*(torch.stack([w[0] for w in record[k]]).float().cpu()
                           for k in ("encoder", "decoder", "cross")))
