"""Incremental decoding over the KV cache equals recomputing the whole prefix each step."""

from __future__ import annotations

import torch

from model.attention import merge_heads
from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from tests.helpers import random_sources


def test_cached_step_equals_full_recompute(hf_checkpoint):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(8, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=11)
    with torch.inference_mode():
        bias = model.source_bias(src)
        memory = model.encode(src, bias)
        cache = model.start_cache(memory, bias, max_len=4)  # small on purpose: forces the cache to grow
        prefix = torch.full((src.shape[0], 1), cfg.decoder_start_token_id)
        for step in range(20):
            cache.reserve(step + 1, 64)
            cached = model.decode_step(prefix[:, -1], step, cache)
            full = model(src, prefix)[:, -1].float()
            assert (cached - full).abs().max().item() <= 1e-5
            assert torch.equal(cached.argmax(-1), full.argmax(-1))
            prefix = torch.cat([prefix, cached.argmax(-1, keepdim=True)], 1)


def test_greedy_from_cache_equals_greedy_from_recompute(hf_checkpoint):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(6, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=12)
    settings = GenerationSettings(max_length=15, banned_ids=(cfg.pad_token_id,))
    got = [h[0].tokens for h in generate(model, src, settings)]
    with torch.inference_mode():
        for row, tokens in zip(src, got):
            row = row[row != cfg.pad_token_id][None]
            prefix = torch.tensor([[cfg.decoder_start_token_id]])
            ref: list[int] = []
            for _ in range(15):
                logits = model(row, prefix)[0, -1].float()
                logits[cfg.pad_token_id] = float("-inf")
                if len(ref) == 14:
                    break
                nxt = int(logits.argmax())
                if nxt == cfg.eos_token_id:
                    break
                ref.append(nxt)
                prefix = torch.cat([prefix, torch.tensor([[nxt]])], 1)
            assert tokens == ref


def test_beams_share_one_cross_attention_row_per_source(hf_checkpoint):
    """Beam search keeps one cross-attention row per sentence and lets its K beams attend to it as
    K queries: the same numbers as giving every beam its own copy of the source."""
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(5, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=13)
    k = 3
    with torch.inference_mode():
        bias = model.source_bias(src)
        memory = model.encode(src, bias)
        shared = model.start_cache(memory, bias, max_len=8, beams=k)
        copied = model.start_cache(memory.repeat_interleave(k, 0), bias.repeat_interleave(k, 0), max_len=8)
        assert shared.cross_k.shape[1] == 5 and shared.self_k.shape[1] == copied.self_k.shape[1] == 15
        layer = model.decoder[0]
        x = torch.randn(15, cfg.d_model, generator=torch.Generator().manual_seed(0))
        one = layer._cross_step(x, shared.cross_k[0], shared.cross_v[0], shared.src_bias)
        each = layer._cross_step(x, copied.cross_k[0], copied.cross_v[0], copied.src_bias)
        torch.testing.assert_close(one, each, rtol=1e-6, atol=1e-6)
        q = model.decoder[0].cross_attn.q(x).view(15, 1, cfg.decoder_attention_heads, -1).transpose(1, 2)
        by_hand = torch.nn.functional.scaled_dot_product_attention(
            q, copied.cross_k[0], copied.cross_v[0], attn_mask=copied.src_bias)
        torch.testing.assert_close(one, merge_heads(by_hand)[:, 0], rtol=1e-6, atol=1e-6)
