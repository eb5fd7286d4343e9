"""Search pieces: beam candidates by blocks (only shows on large vocabularies: the parity configs
have 300-500 tokens) and which rows go on when some finish."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import TOPK_BLOCK, beam_candidates, generate, survivors
from model.generation import GenerationSettings
from tests.helpers import hf_tokens, marian_config, random_sources, save_hf_model


def reference_candidates(logp: torch.Tensor, run_scores: torch.Tensor, count: int):
    """transformers' selection: topk over every beam's scores plus log-probs."""
    n = run_scores.shape[0]
    return (logp.view(n, -1, logp.shape[1]) + run_scores[:, :, None]).view(n, -1).topk(count)


@pytest.mark.parametrize("vocab", [1000, 8000, 8003, 58101])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("first_step", [False, True])
def test_beam_candidates_equal_topk_over_all_beams(vocab, k, first_step):
    gen = torch.Generator().manual_seed(vocab + k)
    n = 24  # enough sums for the block path (PLAIN_TOPK_MAX) from an 8k vocabulary on
    logp = torch.randn(n * (1 if first_step else k), vocab, generator=gen).log_softmax(-1)
    logp[:, 5] = float("-inf")  # a banned token
    logp[0, -3:] += 30.0  # best candidates in the last (shorter) block
    logp[1, :TOPK_BLOCK] += 30.0  # all of them in the first block
    logp[2, ::TOPK_BLOCK] += 30.0  # one per block
    run_scores = -torch.rand(n, k, generator=gen) * 10
    run_scores[3] = torch.tensor([0.0] + [-1.0e9] * (k - 1))  # a first step: only beam 0 is live
    # Later beams far ahead: their blocks must win. (Distinct scores: at the first step the beams
    # share one row, and equal sums may come in either order.)
    run_scores[4, 1:] = run_scores[4, 0] + 25.0 + torch.arange(1, k)
    values, idx = beam_candidates(logp, run_scores, 2 * k)
    ref_values, ref_idx = reference_candidates(logp, run_scores, 2 * k)
    assert torch.equal(values, ref_values)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("sentences, vocab", [(8, 50), (1, 8003), (4, 8003)])
def test_beam_candidates_few_sums_are_the_plain_topk(sentences, vocab):
    gen = torch.Generator().manual_seed(0)
    logp, run_scores = torch.randn(sentences * 4, vocab, generator=gen), torch.randn(sentences, 4, generator=gen)
    assert torch.equal(beam_candidates(logp, run_scores, 8)[1], reference_candidates(logp, run_scores, 8)[1])


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
