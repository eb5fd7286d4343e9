"""The translation engine: tokenized sentences in, hypotheses and timing stats out.

No Ray and no HTTP here: a script or a benchmark drives it directly. Sentences are grouped
by generation settings (one decode call needs one beam size, length penalty...), sorted by
length so a batch holds similar lengths (little padding), and cut into batches by a token
budget: rows x longest source x beam.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from model.decoding import Hypothesis, decode, encode
from model.generation import GenerationSettings
from model.transformer import Transformer
from model.translator import pad_batch

MIN_BATCH_TOKENS = 256  # the token budget never shrinks below this after running out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower() \
        or "can't allocate memory" in str(exc).lower()


def _finite(nbest: list[Hypothesis]) -> bool:
    return all(math.isfinite(h.score) for h in nbest)


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
        stats: list[BatchStats] = []
        for batch in self.plan(tasks):
            for i, h in zip(batch, self._run_splitting([tasks[i] for i in batch], stats)):
                results[i] = h
        return results, stats

    def _run_splitting(self, tasks: list[SentenceTask], stats: list[BatchStats]) -> list[list[Hypothesis]]:
        """One batch; when memory runs out, halve it (and the token budget) instead of failing."""
        try:
            hyps, st = self.run_batch(tasks)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc) or len(tasks) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.max_batch_tokens = max(MIN_BATCH_TOKENS, self.max_batch_tokens // 2)
            half = len(tasks) // 2
            return self._run_splitting(tasks[:half], stats) + self._run_splitting(tasks[half:], stats)
        stats.append(st)
        return hyps

    def run_isolated(self, groups: list[list[SentenceTask]]
                     ) -> tuple[list[list[list[Hypothesis]] | Exception], list[BatchStats]]:
        """Groups (one per request) batched together. A group whose rows score NaN fails by itself;
        if the batch raises, each group is run alone so only the group at fault gets the error."""
        try:
            hyps, stats = self.run([t for g in groups for t in g])
        except Exception as exc:
            if len(groups) == 1:
                return [exc], []
            out: list[list[list[Hypothesis]] | Exception] = []
            stats = []
            for g in groups:
                result, st = self.run_isolated([g])
                out += result
                stats += st
            return out, stats
        out, i = [], 0
        for g in groups:
            part = hyps[i : i + len(g)]
            i += len(g)
            out.append(part if all(_finite(h) for h in part) else ValueError("the model produced non-finite scores"))
        return out, stats

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
