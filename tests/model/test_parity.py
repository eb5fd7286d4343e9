"""Our Transformer against the reference implementation (transformers' MarianMTModel)."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from tests.helpers import hf_tokens, random_sources

N_SOURCES = 64


def _sources(hf_model, seed: int = 0) -> torch.Tensor:
    cfg = hf_model.config
    return random_sources(N_SOURCES, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=seed)


def test_logits_match(hf_checkpoint):
    path, hf = hf_checkpoint
    ours = load_model(path, device="cpu")
    src = _sources(hf)
    tgt = torch.randint(1, hf.config.decoder_vocab_size - 1, (src.shape[0], 9))
    tgt[:, 0] = hf.config.decoder_start_token_id
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=(src != hf.config.pad_token_id).long(), decoder_input_ids=tgt).logits
        mine = ours(src, tgt)
    assert (ref - mine).abs().max().item() <= 1e-4


@pytest.mark.parametrize("beams,length_penalty", [(1, 1.0), (4, 1.0), (4, 0.6), (4, 1.4)])
def test_generate_matches_transformers(hf_checkpoint, beams, length_penalty):
    path, hf = hf_checkpoint
    ours = load_model(path, device="cpu")
    src = _sources(hf, seed=beams)
    mask = (src != hf.config.pad_token_id).long()
    with torch.no_grad():
        ref = hf.generate(input_ids=src, attention_mask=mask, num_beams=beams, length_penalty=length_penalty,
                          do_sample=False, output_scores=True, return_dict_in_generate=True)
    settings = GenerationSettings.from_checkpoint(path, hf.config.pad_token_id).override(
        beam_size=beams, length_penalty=length_penalty)
    got = generate(ours, src, settings)
    assert [h[0].tokens for h in got] == hf_tokens(ref.sequences, hf.config)
    if beams > 1:
        scores = torch.tensor([h[0].score for h in got])
        assert torch.allclose(scores, ref.sequences_scores, atol=1e-4)


def test_nbest_matches_transformers(hf_checkpoint):
    path, hf = hf_checkpoint
    ours = load_model(path, device="cpu")
    src = _sources(hf, seed=7)[:16]
    with torch.no_grad():
        ref = hf.generate(input_ids=src, attention_mask=(src != hf.config.pad_token_id).long(), num_beams=4,
                          num_return_sequences=3, do_sample=False)
    settings = GenerationSettings.from_checkpoint(path, hf.config.pad_token_id).override(beam_size=4,
                                                                                          num_hypotheses=3)
    got = generate(ours, src, settings)
    assert [h.tokens for nbest in got for h in nbest] == hf_tokens(ref, hf.config)


def test_min_length_matches_transformers(hf_checkpoint):
    path, hf = hf_checkpoint
    ours = load_model(path, device="cpu")
    src = _sources(hf, seed=3)[:16]
    with torch.no_grad():
        ref = hf.generate(input_ids=src, attention_mask=(src != hf.config.pad_token_id).long(), num_beams=2,
                          min_length=12, do_sample=False)
    settings = GenerationSettings.from_checkpoint(path, hf.config.pad_token_id).override(beam_size=2, min_length=11)
    got = generate(ours, src, settings)
    assert [h[0].tokens for h in got] == hf_tokens(ref, hf.config)
    assert all(len(h[0].tokens) >= 11 for h in got)
