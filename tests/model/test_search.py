"""Search pieces: block top-k (only shows on large vocabularies: the parity configs have 300-500
tokens) and which rows go on when some finish."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import BLOCK_TOPK_SIZE, TOPK_BLOCK, generate, survivors, top_candidates
from model.generation import GenerationSettings
from tests.helpers import hf_tokens, marian_config, random_sources, save_hf_model


@pytest.mark.parametrize("vocab", [8000, 8003, 58101])
@pytest.mark.parametrize("k", [2, 8])
def test_top_candidates_equal_topk(vocab, k):
    gen = torch.Generator().manual_seed(vocab + k)
    scores = torch.randn(BLOCK_TOPK_SIZE // vocab + 1, vocab, generator=gen).log_softmax(-1)  # the block path
    scores[:, 5] = float("-inf")  # a banned token
    scores[0, -3:] += 30.0  # best candidates in the last (shorter) block
    scores[1, :TOPK_BLOCK] += 30.0  # all of them in the first block
    scores[2, ::TOPK_BLOCK] += 30.0  # one per block
    values, cols = top_candidates(scores, k)
    ref_values, ref_cols = scores.topk(k)
    assert torch.equal(values, ref_values)
    assert torch.equal(cols, ref_cols)


def test_top_candidates_small_vocabulary_many_rows():
    scores = torch.randn(BLOCK_TOPK_SIZE // 50 + 1, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_candidates(scores, 8)[1], scores.topk(8).indices)


def test_beam_search_large_vocab_matches_transformers(tmp_path):
    cfg = marian_config(vocab_size=20000, pad_token_id=19999, decoder_start_token_id=19999, d_model=16,
                        encoder_ffn_dim=32, decoder_ffn_dim=32)
    hf = save_hf_model(cfg, tmp_path, seed=3)
    src = random_sources(32, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=3)
    with torch.no_grad():
        ref = hf.generate(input_ids=src, attention_mask=(src != cfg.pad_token_id).long(), num_beams=4,
                          do_sample=False, output_scores=True, return_dict_in_generate=True)
    settings = GenerationSettings.from_checkpoint(tmp_path, cfg.pad_token_id).override(beam_size=4)
    got = generate(load_model(tmp_path, device="cpu"), src, settings)
    assert [h[0].tokens for h in got] == hf_tokens(ref.sequences, cfg)
    assert torch.allclose(torch.tensor([h[0].score for h in got]), ref.sequences_scores, atol=1e-4)


@pytest.mark.parametrize("done", [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 0], [1, 1, 1],
                                  [0, 1, 1, 0]])
def test_survivors_keep_places_and_move_only_as_many_rows_as_left(done):
    done = torch.tensor(done, dtype=torch.bool)
    order = survivors(done)
    live = (~done).nonzero().squeeze(1).tolist()
    assert sorted(order.tolist()) == live  # every live row once, no finished one
    moved = [i for i, r in enumerate(order.tolist()) if r != i]
    assert all(done[i] for i in moved)  # only the places of rows that left are refilled
    assert len(moved) <= int(done.sum())
