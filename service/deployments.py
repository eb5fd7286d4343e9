"""Ray Serve deployment hosting one model (one directory, one or more language pairs).

A request's texts are split into sentences, tokenized, and cut into chunks that fit the token
budget; chunks from concurrent requests meet in `@serve.batch` (dynamic request batching) and
run through the engine on a single worker thread, so the event loop keeps accepting requests.
Batching knobs are live-tunable through `user_config` (`reconfigure`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from ray import serve

from model.decoding import Hypothesis
from model.generation import GenerationSettings
from model.translator import Translator
from service import text as textlib
from service.engine import BatchStats, Engine, SentenceTask
from service.errors import RequestRejected
from service.schemas import LIMITS, TranslationJob
from service.settings import BatchingConfig

log = logging.getLogger("ray.serve")

WARMUP_TEXT = "Hello."
# Every sentence's output is capped relative to its source (a * source tokens + b), so a
# degenerate repetition loop ends early instead of holding its batch for max_length steps.
LENGTH_CAP_A, LENGTH_CAP_B = 2.5, 10
STUCK_AFTER_S = 120.0  # a batch running longer than this means the replica is wedged


@dataclass
class Chunk:
    """Consecutive sentences of one request that go into one dynamic batch together."""

    tasks: list[SentenceTask]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def cost(self) -> int:
        return sum(len(t.ids) * t.settings.beam_size for t in self.tasks)


@dataclass
class ChunkResult:
    hypotheses: list[list[Hypothesis]]
    queue_s: float
    compute_s: float
    error: str | None = None  # this chunk failed alone; the others in its batch did not


@dataclass
class SentenceOut:
    text: str
    score: float
    alternatives: list[str]


@dataclass
class JobResult:
    texts: list[str]
    scores: list[float | None]
    alternatives: list[list[str]]
    sentences: int
    input_tokens: int
    output_tokens: int
    queue_s: float
    compute_s: float


def job_settings(default: GenerationSettings, job: TranslationJob) -> GenerationSettings:
    """The model's defaults, overridden by the request's options, with the service's length cap."""
    beam = job.beam_size or max(default.beam_size, job.num_alternatives + 1)
    settings = default.override(beam_size=beam, num_hypotheses=job.num_alternatives + 1,
                                length_penalty=job.length_penalty, max_length=job.max_length)
    if settings.max_length_a is None:
        settings = settings.override(max_length_a=LENGTH_CAP_A, max_length_b=LENGTH_CAP_B)
    return settings


def chunk_cost(chunks: list[Chunk]) -> int:
    return sum(c.cost for c in chunks)


def make_chunks(tasks: list[SentenceTask], budget: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[SentenceTask] = []
    cost = 0
    for task in tasks:
        c = len(task.ids) * task.settings.beam_size
        if current and cost + c > budget:
            chunks.append(Chunk(current))
            current, cost = [], 0
        current.append(task)
        cost += c
    if current:
        chunks.append(Chunk(current))
    return chunks


@serve.deployment(name="model", max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=30)
class ModelDeployment:
    def __init__(self, name: str, path: str, pairs: list[str], device: str | None = None, threads: int = 0,
                 dtype: str | None = None) -> None:
        torch.set_num_threads(threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1)
        self.name, self.pairs = name, pairs
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.translator = Translator(path, device=device, dtype=torch_dtype)
        self.tokenizer = self.translator.tokenizer
        self.batching = BatchingConfig()
        self.engine = Engine(self.translator.model, max_batch_tokens=self.batching.max_batch_tokens,
                             max_batch_sentences=self.batching.max_batch_sentences)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.batch_started: float | None = None  # monotonic start of the batch on the engine thread
        from service.metrics import ModelMetrics  # needs a Ray worker: imported here, not at module level

        self.metrics = ModelMetrics(name)
        # Warm up: the first call pays one-time costs (allocator, kernels) before readiness.
        self.translator.translate_batch([WARMUP_TEXT], target_lang=self._first_target())
        self.ready_at = time.time()

    def _first_target(self) -> str | None:
        return self.pairs[0].split("-")[1] if self.pairs else None

    # -- configuration --------------------------------------------------------------------------
    def reconfigure(self, config: dict) -> None:
        self.batching = BatchingConfig(**config)
        self._run_batch.set_max_batch_size(self.batching.max_batch_tokens)
        self._run_batch.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)
        self.engine.max_batch_tokens = self.batching.max_batch_tokens
        self.engine.max_batch_sentences = self.batching.max_batch_sentences

    # -- health -----------------------------------------------------------------------------------
    async def check_health(self) -> None:
        """Fails when the engine thread is wedged, or (when idle) cannot translate a word."""
        started = self.batch_started
        if started is not None:
            if time.monotonic() - started > STUCK_AFTER_S:
                raise RuntimeError(f"a batch has been running for over {STUCK_AFTER_S:.0f}s")
            return  # busy and progressing: a translation is the health check
        ids = self.tokenizer.encode_batch([WARMUP_TEXT], target_lang=self.translator.resolve_target(
            self._first_target()))[0]
        task = SentenceTask(ids, self.translator.settings.override(beam_size=1, max_length=8))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(self.executor, self.engine.run, [task]), timeout=20)

    def info(self) -> dict:
        model = self.translator.model
        p = next(model.parameters())
        return {
            "name": self.name, "pairs": self.pairs, "path": str(self.translator.path),
            "parameters": sum(x.numel() for x in model.parameters()), "device": str(p.device),
            "dtype": str(p.dtype).removeprefix("torch."),
            "max_source_tokens": min(LIMITS.max_sentence_tokens, self.engine.max_source_tokens),
            "default_beam_size": self.translator.settings.beam_size,
        }

    # -- translation ------------------------------------------------------------------------------
    def tasks_for(self, job: TranslationJob) -> tuple[list[list[textlib.Segment]], list[SentenceTask]]:
        """Documents as segments, and one task per translatable sentence (over-long ones split).

        A segment is translatable when something visible is left of it; the rest (blank,
        zero-width or bidi controls only) passes through unchanged."""
        target = self.translator.resolve_target(job.target_lang)
        limit = min(LIMITS.max_sentence_tokens, self.engine.max_source_tokens)
        encode = self.tokenizer.encode_batch
        documents = [textlib.split(t) for t in job.texts]

        def sentences() -> list[str]:
            return [v for segs in documents for s in segs if (v := textlib.visible(s.text))]

        ids = encode(sentences(), target_lang=target)
        if any(len(x) > limit for x in ids):  # rare: re-split only then, and tokenize again
            documents = [[part for seg in segs for part in textlib.split_long(
                seg, lambda text: len(encode([textlib.visible(text)], target_lang=target)[0]) > limit)]
                for segs in documents]
            ids = encode(sentences(), target_lang=target)
        total = sum(map(len, ids))
        if total > LIMITS.max_request_tokens:
            raise RequestRejected(413, "request_too_large", f"the request has {total} source tokens; at most "
                                  f"{LIMITS.max_request_tokens} are allowed. Send fewer or shorter texts")
        settings = job_settings(self.translator.settings, job)
        return documents, [SentenceTask(i, settings) for i in ids]

    async def translate(self, job: TranslationJob) -> JobResult:
        documents, tasks = self.tasks_for(job)
        chunks = make_chunks(tasks, self.batching.max_batch_tokens)
        results = await asyncio.gather(*(self._run_batch(c) for c in chunks))
        failed = next((r.error for r in results if r.error), None)
        if failed:
            raise RequestRejected(422, "untranslatable_input", f"the text could not be translated: {failed}")
        hyps = [h for r in results for h in r.hypotheses]
        outs = iter(self._sentence(h) for h in hyps)
        texts, scores, alternatives = [], [], []
        for segments in documents:
            sent = [next(outs) if textlib.visible(s.text) else None for s in segments]
            texts.append(textlib.join(segments, [o.text if o else s.text for o, s in zip(sent, segments)]))
            real = [o for o in sent if o]
            scores.append(sum(o.score for o in real) / len(real) if real else None)
            alternatives.append([
                textlib.join(segments, [(o.alternatives[j] if j < len(o.alternatives) else o.text) if o else s.text
                                        for o, s in zip(sent, segments)])
                for j in range(job.num_alternatives) if any(o and j < len(o.alternatives) for o in sent)
            ])
        return JobResult(
            texts, scores, alternatives, sentences=len(tasks), input_tokens=sum(len(t.ids) for t in tasks),
            output_tokens=sum(len(h[0].tokens) for h in hyps),
            queue_s=max((r.queue_s for r in results), default=0.0),
            compute_s=max((r.compute_s for r in results), default=0.0),
        )

    def _sentence(self, nbest: list[Hypothesis]) -> SentenceOut:
        texts = self.tokenizer.decode_batch([h.tokens for h in nbest])
        return SentenceOut(texts[0], nbest[0].score, texts[1:])

    @serve.batch(max_batch_size=BatchingConfig().max_batch_tokens, batch_wait_timeout_s=0.005,
                 batch_size_fn=chunk_cost)
    async def _run_batch(self, chunks: list[Chunk]) -> list[ChunkResult]:
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        results, stats = await loop.run_in_executor(self.executor, self._engine_run, [c.tasks for c in chunks])
        compute = sum(s.encode_s + s.decode_s for s in stats)
        waits = [start - c.enqueued for c in chunks]
        self.metrics.record_batch(len(chunks), waits, stats)
        out = []
        for result, wait in zip(results, waits):
            if isinstance(result, Exception):
                log.warning("a request failed alone in its batch: %s", type(result).__name__)
                out.append(ChunkResult([], wait, compute, error=type(result).__name__))
            else:
                out.append(ChunkResult(result, wait, compute))
        return out

    def _engine_run(self, groups: list[list[SentenceTask]]
                    ) -> tuple[list[list[list[Hypothesis]] | Exception], list[BatchStats]]:
        self.batch_started = time.monotonic()
        try:
            return self.engine.run_isolated(groups)
        finally:
            self.batch_started = None
