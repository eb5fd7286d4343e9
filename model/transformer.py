"""The encoder-decoder Transformer: embeddings, encoder, decoder, output projection.

`encode()` runs once per source; `decode_step()` advances every row by one token over a
KVCache. `forward()` is the teacher-forced pass used for training and as the no-cache reference.
Shapes: B batch, S source length, T target length, H heads, Dh head dim, D model dim, V vocab.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.attention import masked_bias
from model.cache import KVCache
from model.config import ModelConfig
from model.layers import DecoderLayer, EncoderLayer
from model.positions import sinusoids


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.enc_embed = nn.Embedding(cfg.vocab_size, d)
        # One matrix for both sides only when the checkpoint ties them (as transformers does):
        # an untied checkpoint with shared vocab still stores distinct encoder/decoder tables.
        one_table = cfg.share_encoder_decoder_embeddings and cfg.tie_word_embeddings
        self.dec_embed = self.enc_embed if one_table else nn.Embedding(cfg.target_vocab_size, d)
        self.lm_head = nn.Linear(d, cfg.target_vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.dec_embed.weight
        # Set by pack_for_cpu() for fp32 inference on CPU (model/packed.py).
        self.packed_head: nn.Module | None = None
        self.register_buffer("final_logits_bias", torch.zeros(cfg.target_vocab_size))
        self.register_buffer("positions", sinusoids(cfg.max_position_embeddings, d), persistent=False)
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        self.embed_drop = nn.Dropout(cfg.dropout)
        drops = (cfg.dropout, cfg.attention_dropout, cfg.activation_dropout)
        self.encoder = nn.ModuleList(
            EncoderLayer(d, cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.activation_function, *drops)
            for _ in range(cfg.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(d, cfg.decoder_attention_heads, cfg.decoder_ffn_dim, cfg.activation_function, *drops)
            for _ in range(cfg.decoder_layers)
        )

    # -- encoder ---------------------------------------------------------------------------
    def source_bias(self, src_ids: Tensor) -> Tensor:
        return masked_bias(src_ids == self.cfg.pad_token_id, self.positions.dtype)  # (B, 1, 1, S)

    def encode(self, src_ids: Tensor, src_bias: Tensor | None = None,
               record: dict[str, list[Tensor]] | None = None) -> Tensor:
        """src_ids (B, S) -> memory (B, S, D). `record` collects attention weights per layer."""
        if src_bias is None:
            src_bias = self.source_bias(src_ids)
        s = src_ids.shape[1]
        x = self.enc_embed(src_ids) * self.embed_scale + self.positions[:s]
        x = self.embed_drop(x)
        for layer in self.encoder:
            x = layer(x, src_bias, record)
        return x

    def encode_tokens(self, src_ids: Tensor, src_bias: Tensor) -> Tensor:
        """`encode` for inference (no dropout, nothing recorded) with the encoder's matrix products
        over source tokens only, as one (tokens, D) matrix: a batch of 16 held-out sentences has 266
        tokens in 16 x 30 positions, and one product over all of its tokens runs faster than one per
        length-sorted chunk of 8 rows (the chunking it replaces: 16 sentences 8.4 -> 6.5 ms, 64:
        29.0 -> 25.5 ms). The memory at every token is encode()'s on the whole batch, bit for bit
        (tests/model/test_batching.py); padding positions hold zeros, masked by `src_bias`."""
        b, s = src_ids.shape
        real = src_ids != self.cfg.pad_token_id
        positions = torch.arange(s, device=src_ids.device).expand(b, s)[real]
        x = self.enc_embed(src_ids[real]) * self.embed_scale + self.positions[positions]  # (tokens, D)
        for layer in self.encoder:
            x = layer.tokens(x, real, src_bias)
        memory = x.new_zeros((b, s, x.shape[1]))
        memory[real] = x
        return memory

    # -- decoder, teacher-forced -----------------------------------------------------------
    def forward(self, src_ids: Tensor, tgt_in: Tensor, record: dict[str, list[Tensor]] | None = None) -> Tensor:
        """Logits (B, T, V) for every target position; tgt_in starts with decoder_start_token_id.

        With `record` ({"encoder": [], "decoder": [], "cross": []}) the attention weights of every
        layer are appended to those lists, each (B, H, Tq, Tk)."""
        src_bias = self.source_bias(src_ids)
        memory = self.encode(src_ids, src_bias, record)
        t = tgt_in.shape[1]
        x = self.dec_embed(tgt_in) * self.embed_scale + self.positions[:t]
        x = self.embed_drop(x)
        for layer in self.decoder:
            x = layer(x, memory, src_bias, record)
        return self.lm_head(x) + self.final_logits_bias

    # -- decoder, one step over the cache --------------------------------------------------
    def cross_kv(self, memory: Tensor, src_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Every decoder layer's cross-attention K and V of the encoder memory (B, S, D), each
        (L, B, H, S, Dh) and contiguous, as attention reads them.

        Only source tokens are projected: padding (half of a batch of 64 held-out sentences) gets
        zeros, which its -inf bias hides as it hid the projection of the encoder's output there
        (K/V at the tokens are bit-identical; 64 sentences 4.8 -> 3.5 ms, 16: 0.95 -> 0.74 ms)."""
        n, s, d = memory.shape
        layers, heads = len(self.decoder), self.cfg.decoder_attention_heads
        real = src_bias[:, 0, 0] == 0  # (B, S)
        tokens = memory[real]  # (tokens, D)
        kv = memory.new_zeros((layers, n, s, 2 * d))
        for i, layer in enumerate(self.decoder):
            kv[i][real] = layer.cross_attn.kv(tokens)
        # (L, B, S, [K|V], H, Dh) -> K and V, each (L, B, H, S, Dh)
        k, v = kv.view(layers, n, s, 2, heads, d // heads).permute(3, 0, 1, 4, 2, 5).contiguous()
        return k, v

    def start_cache(self, memory: Tensor, src_bias: Tensor, max_len: int, beams: int = 1) -> KVCache:
        """Cross-attention K/V for every layer, computed once per source; self-attention buffers for
        max_len steps and `beams` rows per source (row i * beams + b is beam b of source i)."""
        k, v = self.cross_kv(memory, src_bias)
        return KVCache.allocate(k, v, src_bias, max_len, rows=memory.shape[0] * beams)

    def decode_step(self, tokens: Tensor, pos: int | Tensor, cache: KVCache, self_bias: Tensor | None = None) -> Tensor:
        """tokens (B,) at position `pos` (one int, or (B,) per row) -> next-token logits (B, V), float32.

        With per-row positions the cache's self-attention buffers are the rows' live window and
        `self_bias` (B, 1, 1, T) masks what lies beyond each row's position."""
        x = self.dec_embed(tokens) * self.embed_scale + self.positions[pos]  # (B, D)
        for i, layer in enumerate(self.decoder):
            x = layer.step(x, pos, cache.self_k[i], cache.self_v[i], cache.cross_k[i], cache.cross_v[i],
                           cache.src_bias, self_bias)
        if self.packed_head is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return self.packed_head(x)  # final_logits_bias included
        return (self.lm_head(x) + self.final_logits_bias).float()

    def pack_for_cpu(self) -> None:
        """fp32 inference on CPU runs its matmuls through oneDNN with weights packed once: the
        output projection (the step's largest) always, the other layers where that pays (see
        model/packed.py). Call once the weights are final; the checkpoint is unchanged."""
        from model import packed

        weight = self.lm_head.weight
        if not (packed.available() and weight.device.type == "cpu" and weight.dtype == torch.float32):
            return
        self.packed_head = packed.PackedHead(self.lm_head, self.final_logits_bias)
        if packed.packs_every_layer():
            packed.pack_linears(self.encoder)
            packed.pack_linears(self.decoder, few_rows=True)
            for layer in self.decoder:
                layer.cross_attn.kv.split = None  # it projects whole sources, never a step's rows
