"""Attention maps equal what transformers reports with output_attentions=True."""

from __future__ import annotations

import torch

from model.attention_maps import attention_maps
from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from tests.helpers import random_sources


def _eager(path):
    from transformers import MarianMTModel

    return MarianMTModel.from_pretrained(path, attn_implementation="eager").eval()


def test_maps_equal_transformers_output_attentions(hf_checkpoint):
    path, _ = hf_checkpoint
    ours = load_model(path, device="cpu")
    hf = _eager(path)
    cfg = ours.cfg
    for seed in range(3):
        src = random_sources(1, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=seed)
        for beams in (1, 4):
            settings = GenerationSettings.from_checkpoint(path, cfg.pad_token_id).override(beam_size=beams)
            tokens = generate(ours, src, settings)[0][0].tokens + [cfg.eos_token_id]
            maps = attention_maps(ours, src[0].tolist(), tokens)
            dec_in = torch.tensor([[cfg.decoder_start_token_id, *tokens[:-1]]])
            with torch.no_grad():
                ref = hf(input_ids=src, decoder_input_ids=dec_in, output_attentions=True)
            s, t = src.shape[1], len(tokens)
            assert maps.cross.shape == (cfg.decoder_layers, cfg.decoder_attention_heads, t, s)
            assert maps.encoder.shape == (cfg.encoder_layers, cfg.encoder_attention_heads, s, s)
            assert maps.decoder.shape == (cfg.decoder_layers, cfg.decoder_attention_heads, t, t)
            for mine, theirs in ((maps.encoder, ref.encoder_attentions), (maps.decoder, ref.decoder_attentions),
                                 (maps.cross, ref.cross_attentions)):
                assert torch.allclose(mine, torch.stack([x[0] for x in theirs]), atol=1e-5)
            assert torch.allclose(maps.cross.sum(-1), torch.ones(maps.cross.shape[:-1]), atol=1e-5)


def test_greedy_maps_equal_what_generate_saw_at_each_step(hf_checkpoint):
    path, _ = hf_checkpoint
    ours = load_model(path, device="cpu")
    hf = _eager(path)
    cfg = ours.cfg
    src = random_sources(1, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=9)
    with torch.no_grad():
        out = hf.generate(input_ids=src, num_beams=1, do_sample=False, output_attentions=True,
                          return_dict_in_generate=True)
    tokens = out.sequences[0, 1:].tolist()
    if cfg.eos_token_id in tokens:
        tokens = tokens[: tokens.index(cfg.eos_token_id) + 1]
    maps = attention_maps(ours, src[0].tolist(), tokens)
    for step, per_layer in enumerate(out.cross_attentions[: len(tokens)]):
        for layer, att in enumerate(per_layer):  # (1, H, 1, S): the row that predicted token `step`
            assert torch.allclose(maps.cross[layer, :, step], att[0, :, -1], atol=1e-5)


def test_padding_gets_no_attention(hf_checkpoint):
    """A padded batch element and the same sentence alone: rows sum to 1 over the real source."""
    path, _ = hf_checkpoint
    ours = load_model(path, device="cpu")
    cfg = ours.cfg
    src = random_sources(1, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=4)[0].tolist()
    tokens = [5, 6, 7, cfg.eos_token_id]
    alone = attention_maps(ours, src, tokens)
    assert torch.allclose(alone.encoder.sum(-1), torch.ones(alone.encoder.shape[:-1]), atol=1e-5)
    assert torch.allclose(alone.decoder.sum(-1), torch.ones(alone.decoder.shape[:-1]), atol=1e-5)
    assert torch.all(alone.decoder.triu(1) == 0)  # causal: no attention to later target positions
