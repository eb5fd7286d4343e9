"""Batched greedy and beam search over the KV cache.

Beam search follows `transformers`' `_beam_search` step for step (top 2k candidates, the
-1e9 arithmetic, the early-stop heuristic), so results are token-identical to `generate()`.
Rows whose sentence is done leave the batch at once: later steps compute only live rows.
Shapes: N sentences still running, K beam size, V vocab, T max generated length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.generation import GenerationSettings
from model.transformer import Transformer

NEG = -1.0e9  # what transformers adds to rule a candidate out; kept identical for parity
INITIAL_CACHE_LEN = 64  # self-attention cache grows by doubling past this


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS excluded
    score: float  # sum of log-probabilities / length ** length_penalty
    log_prob: float  # sum of log-probabilities


def row_limits(src_ids: Tensor, pad_id: int, settings: GenerationSettings, max_positions: int) -> Tensor:
    """(B,) most tokens each row may generate: the settings' caps and the position table."""
    lengths = (src_ids != pad_id).sum(1).tolist()
    return torch.tensor([min(settings.row_limit(n), max_positions) for n in lengths], dtype=torch.long)


def process(logp: Tensor, step: int, limits: Tensor, settings: GenerationSettings, eos: int) -> Tensor:
    """Bans and forced tokens on (R, V) log-probs at `step` (0-based); limits is (R,)."""
    if settings.banned_ids:
        logp[:, list(settings.banned_ids)] = float("-inf")
    if step < settings.min_length:
        logp[:, eos] = float("-inf")
    if settings.forced_eos:
        last = limits == step + 1
        if bool(last.any()):
            logp[last] = float("-inf")
            logp[last, eos] = 0.0
    if settings.renormalize:
        logp = torch.log_softmax(logp, dim=-1)
    return logp


def encode(model: Transformer, src_ids: Tensor, settings: GenerationSettings) -> tuple[Tensor, Tensor, Tensor]:
    """Run the encoder once: (memory (B, S, D), source bias (B, 1, 1, S), per-row length limits (B,))."""
    cfg = model.cfg
    src_bias = model.source_bias(src_ids)
    memory = model.encode(src_ids, src_bias)
    limits = row_limits(src_ids, cfg.pad_token_id, settings, cfg.max_position_embeddings).to(src_ids.device)
    return memory, src_bias, limits


def decode(model: Transformer, memory: Tensor, src_bias: Tensor, limits: Tensor,
           settings: GenerationSettings) -> list[list[Hypothesis]]:
    """Greedy or beam search over encoded sources."""
    search = greedy if settings.beam_size == 1 else beam_search
    return search(model, memory, src_bias, limits, settings)


@torch.inference_mode()
def generate(model: Transformer, src_ids: Tensor, settings: GenerationSettings) -> list[list[Hypothesis]]:
    """Translate a padded batch (B, S) of source ids; returns num_hypotheses per source, best first."""
    return decode(model, *encode(model, src_ids, settings), settings)


def greedy(model: Transformer, memory: Tensor, src_bias: Tensor, limits: Tensor,
           settings: GenerationSettings) -> list[list[Hypothesis]]:
    cfg = model.cfg
    eos = cfg.eos_token_id
    n, device = memory.shape[0], memory.device
    max_len = int(limits.max())
    cache = model.start_cache(memory, src_bias, min(max_len, INITIAL_CACHE_LEN))
    rows = torch.arange(n, device=device)  # original index of each live row
    tokens = torch.full((n,), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    out = torch.full((n, max_len), cfg.pad_token_id, dtype=torch.long, device=device)
    log_prob = torch.zeros(n, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    for step in range(max_len):
        cache.reserve(step + 1, max_len)
        logp = process(torch.log_softmax(model.decode_step(tokens, step, cache), -1), step, limits, settings, eos)
        best, tokens = logp.max(-1)
        out[rows, step] = tokens
        log_prob[rows] += best
        done = (tokens == eos) | (limits == step + 1)
        if bool(done.any()):
            lengths[rows[done]] = step + 1
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, tokens, limits = rows[keep], tokens[keep], limits[keep]
            cache = cache.select(keep, step + 1)
    return [
        [_hypothesis(out[i, : int(lengths[i])].tolist(), float(log_prob[i]), eos, settings.length_penalty)]
        for i in range(n)
    ]


def beam_search(model: Transformer, memory: Tensor, src_bias: Tensor, limits: Tensor,
                settings: GenerationSettings) -> list[list[Hypothesis]]:
    cfg = model.cfg
    eos, k, lp = cfg.eos_token_id, settings.beam_size, settings.length_penalty
    n, device = memory.shape[0], memory.device
    max_len = int(limits.max())
    expand = torch.arange(n, device=device).repeat_interleave(k)
    cache = model.start_cache(memory, src_bias, min(max_len, INITIAL_CACHE_LEN)).select(expand, 0)

    sent = torch.arange(n, device=device)  # original index of each live sentence
    tokens = torch.full((n * k,), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    run_scores = torch.zeros(n, k, device=device)
    run_scores[:, 1:] = NEG  # only the first beam is live at the start
    run_seq = torch.full((n, k, max_len), cfg.pad_token_id, dtype=torch.long, device=device)
    fin_scores = torch.full((n, k), NEG, device=device)
    fin_seq = run_seq.clone()
    fin_len = torch.zeros(n, k, dtype=torch.long, device=device)
    fin_logp = torch.zeros(n, k, device=device)
    fin_done = torch.zeros(n, k, dtype=torch.bool, device=device)
    unsatisfied = torch.ones(n, dtype=torch.bool, device=device)
    top_k_mask = torch.arange(2 * k, device=device) < k
    results: list[list[Hypothesis]] = [[] for _ in range(n)]

    for step in range(max_len):
        cache.reserve(step + 1, max_len)
        logits = model.decode_step(tokens, step, cache)
        row_limits_ = limits.repeat_interleave(k)
        logp = process(torch.log_softmax(logits, -1), step, row_limits_, settings, eos)
        vocab = logp.shape[-1]
        cand = (logp.view(-1, k, vocab) + run_scores[:, :, None]).view(-1, k * vocab)  # (N, K*V)
        top_scores, top_idx = cand.topk(2 * k)  # (N, 2K)
        src_beam, top_tok = top_idx // vocab, top_idx % vocab
        last = (limits == step + 1)[:, None]  # (N, 1): the row's length limit is reached
        hits = (top_tok == eos) | last
        cand_seq = run_seq.gather(1, src_beam[:, :, None].expand(-1, -1, max_len)).clone()  # (N, 2K, T)
        cand_seq[:, :, step] = top_tok

        # Running beams for the next step: the best K that did not just end.
        run_cand = top_scores + hits.float() * NEG
        nxt = run_cand.topk(k).indices
        run_scores = run_cand.gather(1, nxt)
        run_seq = cand_seq.gather(1, nxt[:, :, None].expand(-1, -1, max_len))
        run_src = src_beam.gather(1, nxt)
        tokens = top_tok.gather(1, nxt).view(-1)

        # Finished hypotheses: merge the ones that just ended (among the top K) into the best K.
        norm = top_scores / float((step + 1) ** lp)
        if settings.early_stopping:
            norm = norm + fin_done.all(1, keepdim=True).float() * NEG
        norm = norm + (~unsatisfied)[:, None].float() * NEG
        just = hits & top_k_mask[None, :]
        norm = norm + (~just).float() * NEG
        merged = torch.cat((fin_scores, norm), 1)
        pick = merged.topk(k).indices
        fin_scores = merged.gather(1, pick)
        fin_seq = torch.cat((fin_seq, cand_seq), 1).gather(1, pick[:, :, None].expand(-1, -1, max_len))
        fin_len = torch.cat((fin_len, torch.full_like(top_tok, step + 1)), 1).gather(1, pick)
        fin_logp = torch.cat((fin_logp, top_scores), 1).gather(1, pick)
        fin_done = torch.cat((fin_done, just), 1).gather(1, pick)

        rows = (torch.arange(run_src.shape[0], device=device)[:, None] * k + run_src).view(-1)
        cache.reorder_self(rows, step + 1)

        # Can any running beam still beat the worst finished one? (transformers' heuristic)
        best_running = run_scores[:, :1] / float((step + 1) ** lp)
        worst = torch.where(fin_done, fin_scores.min(1, keepdim=True).values, torch.full_like(fin_scores, NEG))
        unsatisfied = unsatisfied & (best_running > worst).any(1) & ~last[:, 0]
        done = ~unsatisfied
        if settings.early_stopping:
            done = done | fin_done.all(1)
        if bool(done.any()):
            for j in done.nonzero().squeeze(1).tolist():
                results[int(sent[j])] = [
                    _hypothesis(fin_seq[j, b, : int(fin_len[j, b])].tolist(), float(fin_logp[j, b]), eos, lp)
                    for b in range(settings.num_hypotheses)
                ]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            sent, limits, unsatisfied = sent[keep], limits[keep], unsatisfied[keep]
            run_scores, run_seq, tokens = run_scores[keep], run_seq[keep], tokens.view(-1, k)[keep].view(-1)
            fin_scores, fin_seq, fin_len, fin_logp, fin_done = (
                fin_scores[keep], fin_seq[keep], fin_len[keep], fin_logp[keep], fin_done[keep])
            keep_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
            cache = cache.select(keep_rows, step + 1)
    return results


def _hypothesis(ids: list[int], log_prob: float, eos: int, length_penalty: float) -> Hypothesis:
    length = len(ids)
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return Hypothesis(ids, log_prob / max(length, 1) ** length_penalty, log_prob)
