"""A batch of mixed-length sources gives the same tokens as translating each alone."""

from __future__ import annotations

import pytest
import torch

from loadtests.workload import held_out_pairs
from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from model.tokenizer import MarianTokenizer
from model.translator import EMBEDDED_MODEL, pad_batch
from tests.helpers import random_sources


@pytest.mark.parametrize("beams", [1, 3])
def test_batch_equals_one_by_one(hf_checkpoint, beams):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(40, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=5)
    assert (src == cfg.pad_token_id).any()  # mixed lengths: the encoder packs the batch's tokens
    settings = GenerationSettings.from_checkpoint(path, cfg.pad_token_id).override(beam_size=beams)
    batched = [h[0].tokens for h in generate(model, src, settings)]
    alone = []
    for row in src:
        row = row[row != cfg.pad_token_id][None]
        alone.append(generate(model, row, settings)[0][0].tokens)
    assert batched == alone


def test_relative_length_limit_per_row(hf_checkpoint):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(16, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=6)
    lengths = (src != cfg.pad_token_id).sum(1).tolist()
    for beams in (1, 2):
        settings = GenerationSettings(beam_size=beams, max_length=40, max_length_a=0.5, max_length_b=1,
                                      banned_ids=(cfg.pad_token_id,))
        for n, hyps in zip(lengths, generate(model, src, settings)):
            limit = int(0.5 * n) + 1
            assert len(hyps[0].tokens) <= limit - 1  # the last allowed token is the forced EOS


@pytest.mark.parametrize("rows", [1, 16, 64])
def test_token_packed_encoder_equals_the_batch_encoder(rows):
    """encode_tokens runs the encoder's matrix products over source tokens only: on held-out
    sentences its memory is encode()'s at every token, bit for bit, and zero at padding."""
    model = load_model(EMBEDDED_MODEL, device="cpu", dtype=torch.float32)
    tok = MarianTokenizer(EMBEDDED_MODEL)
    sources = tok.encode_batch([en for en, _ in held_out_pairs()[:128]], target_lang="de")
    with torch.inference_mode():
        for start in range(0, len(sources), rows):
            batch = pad_batch(sources[start : start + rows], tok.pad_id)
            bias, real = model.source_bias(batch), batch != tok.pad_id
            packed, whole = model.encode_tokens(batch, bias), model.encode(batch, bias)
            assert torch.equal(packed[real], whole[real])
            assert not packed[~real].any()
