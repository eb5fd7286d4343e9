"""The translation engine: tokenized sentences in, hypotheses and timing stats out.

No Ray and no HTTP here: a script or a benchmark drives it directly. Sentences are grouped
by generation settings (one decode call needs one beam size, length penalty...), sorted by
length so a batch holds similar lengths (little padding), and cut into batches by a token
budget: rows x longest source x beam.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from model.decoding import Hypothesis, decode, encode
from model.generation import GenerationSettings
from model.transformer import Transformer
from model.translator import pad_batch


@dataclass(frozen=True)
class SentenceTask:
    ids: list[int]  # source ids, </s> included
    settings: GenerationSettings


@dataclass
class BatchStats:
    sentences: int
    beam_size: int
    source_tokens: int  # real tokens
    padded_tokens: int  # rows x longest source
    output_tokens: int  # generated tokens of the best hypotheses, EOS included
    encode_s: float
    decode_s: float

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.source_tokens / self.padded_tokens if self.padded_tokens else 0.0


class Engine:
    def __init__(self, model: Transformer, *, max_batch_tokens: int = 4096, max_batch_sentences: int = 64) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_sentences = max_batch_sentences

    @property
    def max_source_tokens(self) -> int:
        return self.model.cfg.max_position_embeddings

    def plan(self, tasks: list[SentenceTask]) -> list[list[int]]:
        """Indices of `tasks`, grouped into batches (same settings, similar length, within budget)."""
        groups: dict[GenerationSettings, list[int]] = defaultdict(list)
        for i, task in enumerate(tasks):
            groups[task.settings].append(i)
        batches: list[list[int]] = []
        for settings, members in groups.items():
            members.sort(key=lambda i: len(tasks[i].ids))
            current: list[int] = []
            for i in members:
                rows = len(current) + 1
                cost = rows * len(tasks[i].ids) * settings.beam_size  # sorted: this one is the longest
                if current and (cost > self.max_batch_tokens or rows > self.max_batch_sentences):
                    batches.append(current)
                    current = []
                current.append(i)
            if current:
                batches.append(current)
        return batches

    def run(self, tasks: list[SentenceTask]) -> tuple[list[list[Hypothesis]], list[BatchStats]]:
        """All tasks, batched; results in task order."""
        results: list[list[Hypothesis]] = [[] for _ in tasks]
        stats = []
        for batch in self.plan(tasks):
            hyps, st = self.run_batch([tasks[i] for i in batch])
            for i, h in zip(batch, hyps):
                results[i] = h
            stats.append(st)
        return results, stats

    @torch.inference_mode()
    def run_batch(self, tasks: list[SentenceTask]) -> tuple[list[list[Hypothesis]], BatchStats]:
        """One decode call: every task must share its settings."""
        settings = tasks[0].settings
        src = pad_batch([t.ids for t in tasks], self.model.cfg.pad_token_id, self.device)
        t0 = time.perf_counter()
        memory, bias, limits = encode(self.model, src, settings)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        hyps = decode(self.model, memory, bias, limits, settings)
        t2 = time.perf_counter()
        real = sum(len(t.ids) for t in tasks)
        out_tokens = sum(len(h[0].tokens) + 1 for h in hyps)
        return hyps, BatchStats(len(tasks), settings.beam_size, real, src.numel(), out_tokens, t1 - t0, t2 - t1)
