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

from model.cache import KVCache
from model.generation import GenerationSettings
from model.transformer import Transformer

NEG = -1.0e9  # what transformers adds to rule a candidate out; kept identical for parity
INITIAL_CACHE_LEN = 64  # self-attention cache grows by doubling past this
TOPK_BLOCK = 64  # vocabulary columns per block in beam_candidates (measured best of 16-256)
PLAIN_TOPK_MAX = 1 << 17  # sums (N x K x V) up to which beam_candidates runs one plain topk


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS excluded
    score: float  # sum of log-probabilities / length ** length_penalty
    log_prob: float  # sum of log-probabilities


def row_limits(src_ids: Tensor, pad_id: int, settings: GenerationSettings, max_positions: int) -> Tensor:
    """(B,) most tokens each row may generate: the settings' caps and the position table."""
    lengths = (src_ids != pad_id).sum(1).tolist()
    return torch.tensor([min(settings.row_limit(n), max_positions) for n in lengths], dtype=torch.long)


def log_probs(logits: Tensor) -> Tensor:
    """log_softmax over the vocabulary, written over `logits` (a step's own output): a fresh
    (rows x V) result costs more in page faults than the softmax itself (opus-mt's 58k vocabulary
    at 256 rows: 18 ms -> 4 ms). Same values, bit for bit."""
    return torch.log_softmax(logits, -1, out=logits)


def beam_candidates(logp: Tensor, run_scores: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The `count` best continuations of each sentence over its K beams and the vocabulary, as
    transformers picks them: topk over the (N, K x V) sums run_score + log-prob. -> (sums (N, count),
    indices beam * V + token). `logp` is (N*K, V), or (N, V) when all beams have the same log-probs
    (the first step); `run_scores` is (N, K).

    On CPU that topk costs a partial sort per row, data-dependent and slow for a large vocabulary
    (embedded, 64 x 4 beams: 1.2 ms a step; opus-mt's 58k: 7.4 ms). The `count` best sums all lie
    in the `count` (beam, block of TOPK_BLOCK columns) pairs with the best block maximum plus beam
    score (adding a beam's score keeps the order within its row, in floating point too), so: one
    max per block, the beams' scores added, topk over those pairs, then topk over their columns:
    the two selections run over ~500 values per sentence, not K x V (64 x 4 beams: 0.75 ms, 58k
    vocabulary 1.8 ms; the best 2K per beam first, then merged, as before: 0.91 and 2.0 ms; 16 x 4
    beams 0.20 ms vs 0.33). Same sums and indices, except which of two exactly equal sums comes
    first. The blocks' dozen operations cost more than they save on few sums (up to PLAIN_TOPK_MAX:
    1 sentence x 4 beams x 8k vocabulary 61 -> 40 us, 4 sentences 94 -> 70; 8: equal; 58k
    vocabulary, 1 sentence: blocks 86 us, plain 246), so there one topk runs over all of them."""
    n = run_scores.shape[0]
    beam_rows, vocab = logp.shape[0] // n, logp.shape[1]  # beam_rows: K, or 1 at the first step
    c = TOPK_BLOCK
    if vocab < 2 * count * c or run_scores.numel() * vocab <= PLAIN_TOPK_MAX:  # the plain topk is cheap
        return (logp.view(n, beam_rows, vocab) + run_scores[:, :, None]).view(n, -1).topk(count)
    whole = vocab - vocab % c
    block_max = logp.unfold(1, c, c).amax(-1)  # whole blocks, a view (slicing first made a copy)
    if whole < vocab:  # the last, shorter block
        block_max = torch.cat((block_max, logp[:, whole:].amax(-1, keepdim=True)), 1)
    blocks = block_max.shape[1]
    pairs = (block_max.view(n, beam_rows, blocks) + run_scores[:, :, None]).view(n, -1).topk(count).indices
    beam, block = pairs // blocks, pairs % blocks  # (N, count)
    cols = block[:, :, None] * c + torch.arange(c, device=logp.device)  # (N, count, c)
    outside = cols >= vocab  # the last block's columns past the vocabulary
    cols = cols.clamp_max(vocab - 1)
    rows = torch.arange(n, device=logp.device)[:, None] * beam_rows + (beam if beam_rows > 1 else 0)
    sums = logp[rows[:, :, None], cols] + run_scores.gather(1, beam)[:, :, None]
    top, pick = sums.masked_fill_(outside, float("-inf")).view(n, -1).topk(count)
    return top, (beam[:, :, None] * vocab + cols).view(n, -1).gather(1, pick)


def process(logp: Tensor, step: int | Tensor, limits: Tensor, settings: GenerationSettings, eos: int) -> Tensor:
    """Bans and forced tokens on (R, V) log-probs; `step` (0-based) is one int or one per row."""
    if settings.banned_ids:
        logp[:, list(settings.banned_ids)] = float("-inf")
    if isinstance(step, int):
        if step < settings.min_length:
            logp[:, eos] = float("-inf")
    elif settings.min_length:
        logp[step < settings.min_length, eos] = float("-inf")
    if settings.forced_eos:
        last = limits == step + 1
        if bool(last.any()):
            logp[last] = float("-inf")
            logp[last, eos] = 0.0
    if settings.renormalize:
        logp = torch.log_softmax(logp, dim=-1)
    return logp


def survivors(done: Tensor) -> Tensor:
    """Which rows go on, in their new order, when the rows (or sentences) marked `done` leave: the
    rows in the first len(survivors) places stay where they are, and the last ones fill the places
    of those that left, so KVCache.gather_ moves only as many rows as left. (Keeping the order
    meant moving every row after the first one to leave: greedy, batch of 64, 12.2 -> 4.3 ms of
    cache copies per batch.) Rows are independent, so their order changes no result."""
    alive = ~done
    n = int(alive.sum())
    order = torch.arange(n, device=done.device)
    holes = (~alive[:n]).nonzero().squeeze(1)
    order[holes] = alive[n:].nonzero().squeeze(1) + n  # as many live rows past n as holes before it
    return order


def encode(model: Transformer, src_ids: Tensor, settings: GenerationSettings) -> tuple[Tensor, Tensor, Tensor]:
    """Run the encoder once: (memory (B, S, D), source bias (B, 1, 1, S), per-row length limits (B,))."""
    cfg = model.cfg
    src_bias = model.source_bias(src_ids)
    memory = model.encode_tokens(src_ids, src_bias)
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
        logp = process(log_probs(model.decode_step(tokens, step, cache)), step, limits, settings, eos)
        best, tokens = logp.max(-1)
        out[rows, step] = tokens
        log_prob[rows] += best
        done = (tokens == eos) | (limits == step + 1)
        if bool(done.any()):
            lengths[rows[done]] = step + 1
            keep = survivors(done)
            if keep.numel() == 0:
                break
            rows, tokens, limits = rows[keep], tokens[keep], limits[keep]
            cache.gather_(keep, step + 1, keep)
    return [
        [to_hypothesis(out[i, : int(lengths[i])].tolist(), float(log_prob[i]), eos, settings.length_penalty)]
        for i in range(n)
    ]


class BeamState:
    """Beam search bookkeeping for N sentences of beam K, as transformers' `_beam_search` does it.

    `step()` takes the (N*K, V) processed log-probs of the sentences' rows (row i*K+b belongs to
    sentence i) and returns the next tokens, which row each new row continues (for reordering
    the cache) and which sentences are done. Sentences may be at different steps, with their own
    length penalty and limit: batched beam search holds one batch of them, continuous batching
    one state per beam size that sentences join and leave, so both give the same tokens."""

    def __init__(self, k: int, max_len: int, pad: int, device: torch.device, early_stopping: bool = False) -> None:
        self.k, self.max_len, self.pad, self.device, self.early = k, max_len, pad, device, early_stopping
        self.top_k_mask = torch.arange(2 * k, device=device) < k
        self.run_scores = torch.zeros(0, k, device=device)
        self.run_seq = torch.zeros(0, k, max_len, dtype=torch.long, device=device)
        self.fin_scores = torch.zeros(0, k, device=device)
        self.fin_seq = torch.zeros(0, k, max_len, dtype=torch.long, device=device)
        self.fin_len = torch.zeros(0, k, dtype=torch.long, device=device)
        self.fin_logp = torch.zeros(0, k, device=device)
        self.fin_done = torch.zeros(0, k, dtype=torch.bool, device=device)
        self.unsatisfied = torch.zeros(0, dtype=torch.bool, device=device)
        self.steps = torch.zeros(0, dtype=torch.long, device=device)  # tokens generated so far
        self.limits = torch.zeros(0, dtype=torch.long, device=device)  # most tokens, EOS included
        self.penalty = torch.zeros(0, dtype=torch.float64, device=device)  # length penalty
        # Sequence columns that may hold tokens (a bound on steps + 1): each step copies only these,
        # not all max_len columns (256 by default), so a step's copying does not grow with the limit.
        self.width = 0

    @property
    def n(self) -> int:
        return self.steps.numel()

    def add(self, limits: list[int], penalties: list[float]) -> None:
        """New sentences, at step 0."""
        n, k, dev = len(limits), self.k, self.device
        start = torch.zeros(n, k, device=dev)
        start[:, 1:] = NEG  # only the first beam is live at the start
        seq = torch.full((n, k, self.max_len), self.pad, dtype=torch.long, device=dev)
        self.run_scores = torch.cat((self.run_scores, start))
        self.run_seq = torch.cat((self.run_seq, seq))
        self.fin_scores = torch.cat((self.fin_scores, torch.full((n, k), NEG, device=dev)))
        self.fin_seq = torch.cat((self.fin_seq, seq))
        self.fin_len = torch.cat((self.fin_len, torch.zeros(n, k, dtype=torch.long, device=dev)))
        self.fin_logp = torch.cat((self.fin_logp, torch.zeros(n, k, device=dev)))
        self.fin_done = torch.cat((self.fin_done, torch.zeros(n, k, dtype=torch.bool, device=dev)))
        self.unsatisfied = torch.cat((self.unsatisfied, torch.ones(n, dtype=torch.bool, device=dev)))
        self.steps = torch.cat((self.steps, torch.zeros(n, dtype=torch.long, device=dev)))
        self.limits = torch.cat((self.limits, torch.tensor(limits, dtype=torch.long, device=dev)))
        self.penalty = torch.cat((self.penalty, torch.tensor(penalties, dtype=torch.float64, device=dev)))

    def step(self, logp: Tensor, eos: int) -> tuple[Tensor, Tensor, Tensor]:
        """-> (next tokens (N*K,), row each new row continues (N*K,), done (N,)).

        `logp` is (N*K, V), or (N, V) when every beam of a sentence has the same log-probs (the
        first step, where all beams are the start token: beam search's first step runs one row per
        sentence); the returned rows then still count N*K rows (sentence i's are i*K...i*K+K-1)."""
        k, max_len, dev = self.k, self.max_len, self.device
        n = self.n
        vocab = logp.shape[-1]
        length = self.steps + 1  # (N,) tokens per hypothesis after this step, EOS included
        # Lengths ** penalty in float64, then float32: what `x / (length ** penalty)` does in transformers.
        denom = (length.double() ** self.penalty).float()[:, None]  # (N, 1)
        top_scores, top_idx = beam_candidates(logp, self.run_scores, 2 * k)  # (N, 2K)
        src_beam, top_tok = top_idx // vocab, top_idx % vocab
        last = (self.limits == length)[:, None]  # (N, 1): the sentence's length limit is reached
        hits = (top_tok == eos) | last
        w = self.width = min(self.width + 1, max_len)
        cand_seq = self.run_seq[:, :, :w].gather(1, src_beam[:, :, None].expand(-1, -1, w))  # (N, 2K, w)
        cand_seq.scatter_(2, self.steps[:, None, None].expand(-1, 2 * k, 1), top_tok[:, :, None])

        # transformers rules candidates out by adding flag * -1e9. torch.add(x, flags, alpha=NEG) is
        # the same sum in one operation instead of three (flag * NEG is exact: 0 or -1e9, which
        # float32 holds exactly), and topk's values are the gathered scores: the same numbers with
        # fewer small operations (~25 us less a step, 1-64 sentences; each one costs a few us).
        # Running beams for the next step: the best K that did not just end.
        self.run_scores, nxt = torch.add(top_scores, hits, alpha=NEG).topk(k)
        self.run_seq[:, :, :w] = cand_seq.gather(1, nxt[:, :, None].expand(-1, -1, w))
        run_src = src_beam.gather(1, nxt)
        tokens = top_tok.gather(1, nxt).view(-1)

        # Finished hypotheses: merge the ones that just ended (among the top K) into the best K.
        norm = top_scores / denom
        if self.early:
            norm = torch.add(norm, self.fin_done.all(1, keepdim=True), alpha=NEG)
        norm = torch.add(norm, ~self.unsatisfied[:, None], alpha=NEG)
        just = hits & self.top_k_mask
        norm = torch.add(norm, ~just, alpha=NEG)
        self.fin_scores, pick = torch.cat((self.fin_scores, norm), 1).topk(k)
        self.fin_seq[:, :, :w] = torch.cat((self.fin_seq[:, :, :w], cand_seq), 1).gather(
            1, pick[:, :, None].expand(-1, -1, w))
        self.fin_len = torch.cat((self.fin_len, length[:, None].expand_as(top_tok)), 1).gather(1, pick)
        self.fin_logp = torch.cat((self.fin_logp, top_scores), 1).gather(1, pick)
        self.fin_done = torch.cat((self.fin_done, just), 1).gather(1, pick)

        # Can any running beam still beat the worst finished one? (transformers' heuristic)
        best_running = self.run_scores[:, :1] / denom
        worst = torch.where(self.fin_done, self.fin_scores.min(1, keepdim=True).values, NEG)
        self.unsatisfied = self.unsatisfied & (best_running > worst).any(1) & ~last[:, 0]
        done = ~self.unsatisfied
        if self.early:
            done = done | self.fin_done.all(1)
        self.steps = length
        rows = (torch.arange(n, device=dev)[:, None] * k + run_src).view(-1)
        return tokens, rows, done

    def hypotheses(self, j: int, eos: int, count: int) -> list[Hypothesis]:
        """The `count`-best of sentence j, best first."""
        lp = float(self.penalty[j])
        return [to_hypothesis(self.fin_seq[j, b, : int(self.fin_len[j, b])].tolist(), float(self.fin_logp[j, b]),
                              eos, lp) for b in range(count)]

    def keep(self, idx: Tensor) -> None:
        """Drop every sentence not in `idx`."""
        for name in ("run_scores", "run_seq", "fin_scores", "fin_seq", "fin_len", "fin_logp", "fin_done",
                     "unsatisfied", "steps", "limits", "penalty"):
            setattr(self, name, getattr(self, name)[idx])
        self.width = int(self.steps.max()) if self.n else 0


def beam_search(model: Transformer, memory: Tensor, src_bias: Tensor, limits: Tensor,
                settings: GenerationSettings) -> list[list[Hypothesis]]:
    cfg = model.cfg
    eos, k = cfg.eos_token_id, settings.beam_size
    n, device = memory.shape[0], memory.device
    max_len = int(limits.max())
    cache = model.start_cache(memory, src_bias, min(max_len, INITIAL_CACHE_LEN), beams=k)
    sent = torch.arange(n, device=device)  # original index of each live sentence
    tokens = torch.full((n * k,), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    beams = BeamState(k, max_len, cfg.pad_token_id, device, settings.early_stopping)
    beams.add(limits.tolist(), [settings.length_penalty] * n)
    results: list[list[Hypothesis]] = [[] for _ in range(n)]
    row_limits = limits.repeat_interleave(k)  # one per beam row; changes only when sentences finish
    for step in range(max_len):
        cache.reserve(step + 1, max_len)
        if step == 0:
            # Every beam starts from the same token, so the first step computes one row per sentence
            # (as CTranslate2 does) into the first N cache rows; the gather below copies each
            # sentence's row to its K beams (row r continues sentence r // K).
            first = KVCache(cache.self_k[:, :n], cache.self_v[:, :n], cache.cross_k, cache.cross_v, cache.src_bias)
            logp = process(log_probs(model.decode_step(tokens[::k], step, first)), step, limits, settings, eos)
        else:
            logp = process(log_probs(model.decode_step(tokens, step, cache)), step, row_limits, settings, eos)
        tokens, rows, done = beams.step(logp, eos)
        if step == 0:
            rows = rows // k
        if not bool(done.any()):
            cache.gather_(rows, step + 1)  # each row continues the hypothesis it was chosen from
            continue
        for j in done.nonzero().squeeze(1).tolist():
            results[int(sent[j])] = beams.hypotheses(j, eos, settings.num_hypotheses)
        keep = survivors(done)
        if keep.numel() == 0:
            break
        sent, limits = sent[keep], limits[keep]
        row_limits = limits.repeat_interleave(k)
        beams.keep(keep)
        tokens = tokens.view(-1, k)[keep].view(-1)
        # Reorder and drop the finished sentences' rows in one gather.
        cache.gather_(rows[(keep[:, None] * k + torch.arange(k, device=device)).view(-1)], step + 1, keep)
    return results


def to_hypothesis(ids: list[int], log_prob: float, eos: int, length_penalty: float) -> Hypothesis:
    length = len(ids)
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return Hypothesis(ids, log_prob / max(length, 1) ** length_penalty, log_prob)
