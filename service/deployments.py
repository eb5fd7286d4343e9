"""A model, hosted by Ray Serve: ModelHost (tokenization, engines, results) and ModelDeployment.

A request's texts are split into sentences and tokenized; each sentence then becomes a future
that one of two batching modes resolves:
- continuous: sentences join the running decoder batch at the next step and leave it as soon as
  they finish (service/continuous.py), by default in an engine process of its own
  (service/engine_process.py), so the decoder never waits for the HTTP server's interpreter lock;
- request: sentences are cut into chunks that fit the token budget; chunks from concurrent
  requests meet in `@serve.batch` and run through the engine on a single worker thread.
Either way the event loop keeps accepting requests, and a cancelled request (deadline, client
gone) withdraws its unfinished sentences. A host holding more than `max_queue_delay_s` of work answers 503.
Knobs are live-tunable via `user_config`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from ray import serve

from model.attention_maps import attention_maps
from model.decoding import Hypothesis
from model.generation import GenerationSettings
from model.translator import Translator
from service import alignment
from service import text as textlib
from service.continuous import ContinuousEngine
from service.engine import BatchStats, Engine, SentenceTask
from service.engine_process import EngineGone, EngineProcess, EngineSpec
from service.errors import RequestRejected
from service.scheduler import Callback, Cancelled
from service.schemas import LIMITS, TranslationJob
from service.settings import BatchingConfig

log = logging.getLogger("ray.serve")

WARMUP_TEXT = "Hello."
# Every sentence's output is capped relative to its source (a * source tokens + b), so a
# degenerate repetition loop ends early instead of holding its batch for max_length steps.
LENGTH_CAP_A, LENGTH_CAP_B = 2.5, 10
STUCK_AFTER_S = 120.0  # a batch running longer than this means the replica is wedged
RATE_WINDOW_S = 5.0  # how far back the finishing rate that bounds pending work is measured
ATTENTION_MAX_TOKENS = 64  # /v1/attention returns L x H x T x S numbers: keep them few


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
class SentenceDone:
    """One sentence's n-best and how long it waited for, and spent in, the decoder."""

    hypotheses: list[Hypothesis]
    queue_s: float
    compute_s: float


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
    alignments: list[list[dict]] | None = None


def _resolver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, group: list) -> Callback:
    """A continuous-engine callback (engine thread) that resolves `fut` on the event loop;
    `group` receives the SequenceGroup once submitted (for its queue and decode times)."""

    def resolve(result: list[Hypothesis] | BaseException) -> None:
        finished = time.monotonic()
        g = group[0] if group else None
        admitted = g.admitted if g is not None and g.admitted is not None else finished
        queue_s = admitted - g.arrived if g is not None else 0.0

        def settle() -> None:
            if fut.done():
                return
            if isinstance(result, Cancelled):
                fut.cancel()
            elif isinstance(result, EngineGone):
                fut.set_exception(RequestRejected(503, "overloaded", "the model's engine restarted; retry"))
            elif isinstance(result, BaseException):
                fut.set_exception(RequestRejected(422, "untranslatable_input",
                                                  f"the text could not be translated: {type(result).__name__}"))
            else:
                fut.set_result(SentenceDone(result, queue_s, finished - admitted))

        loop.call_soon_threadsafe(settle)

    return resolve


def _fan_out(futures: list[asyncio.Future]) -> Callable[[asyncio.Future], None]:
    """A chunk's result, spread over its sentences' futures."""

    def spread(run: asyncio.Future) -> None:
        if run.cancelled():
            for f in futures:
                f.cancel()
            return
        exc = run.exception()
        result: ChunkResult | None = None if exc else run.result()
        for n, f in enumerate(futures):
            if f.done():
                continue
            if exc is not None:
                f.set_exception(exc)
            elif result is not None and result.error:
                f.set_exception(RequestRejected(422, "untranslatable_input",
                                                f"the text could not be translated: {result.error}"))
            elif result is not None:
                f.set_result(SentenceDone(result.hypotheses[n], result.queue_s, result.compute_s))

    return spread


def _shift(span: alignment.Span, by: int) -> dict:
    return {"text": span.text, "start": span.start + by, "end": span.end + by}


def _rounded(t: torch.Tensor) -> list:
    return (t * 1e4).round().div(1e4).tolist()


def _retire(engine: ContinuousEngine | EngineProcess) -> None:
    """Let a replaced engine finish what it holds, then stop its thread."""
    while not engine.idle():
        time.sleep(0.1)
    engine.stop()


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


class ModelHost:
    """One model in this process: tokenization, the engines, and results. Ray Serve hosts it either
    in its own deployment (ModelDeployment, behind a separate ingress) or inside the ingress itself
    (one model, one hop: service/api.py)."""

    def __init__(self, name: str, path: str, pairs: list[str], device: str | None = None, threads: int = 0,
                 dtype: str | None = None, batching: dict | None = None) -> None:
        torch.set_num_threads(threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1)
        self.name, self.pairs = name, pairs
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.translator = Translator(path, device=device, dtype=torch_dtype)
        self.tokenizer = self.translator.tokenizer
        # The deployment's user_config, also given here so the right engine starts once (reconfigure follows).
        self.batching = BatchingConfig(**(batching or {}))
        self.engine = Engine(self.translator.model, max_batch_tokens=self.batching.max_batch_tokens,
                             max_batch_sentences=self.batching.max_batch_sentences)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.batch_started: float | None = None  # monotonic start of the batch on the engine thread
        self.pending = 0  # sentences submitted and not yet finished (either engine)
        self.finished: deque[float] = deque()  # when sentences finished, over the last RATE_WINDOW_S
        from service.metrics import ContinuousMetrics, ModelMetrics  # need a Ray worker: imported here

        self.metrics = ModelMetrics(name)
        self.continuous_metrics = ContinuousMetrics(self.metrics)
        self.continuous: ContinuousEngine | EngineProcess | None = None
        self._start_continuous()
        # Warm up: the first call pays one-time costs (allocator, kernels) before readiness.
        self.translator.translate_batch([WARMUP_TEXT], target_lang=self._first_target())
        self.ready_at = time.time()

    def _start_continuous(self) -> None:
        """(Re)build the continuous engine when its shape changed; a replaced one finishes its work."""
        b = self.batching
        old = self.continuous
        if b.mode != "continuous":  # request mode needs no engine of its own; a running one is retired
            if old is not None:
                self.continuous = None
                threading.Thread(target=_retire, args=(old,), daemon=True).start()
            return
        knobs = dict(max_encode_tokens=b.max_encode_tokens, max_active_tokens=b.max_batch_tokens * 4,
                     admit_batch=b.admit_batch, admit_wait_s=b.admit_wait_s)
        if old is not None and old.slots == b.slots and isinstance(old, EngineProcess) == b.engine_process:
            old.configure(**knobs)
            return
        max_source = min(LIMITS.max_sentence_tokens, self.engine.max_source_tokens)
        engine: ContinuousEngine | EngineProcess
        if b.engine_process:
            p = next(self.translator.model.parameters())
            engine = EngineProcess(EngineSpec(
                str(self.translator.path), p.device.type, str(p.dtype).removeprefix("torch."), torch.get_num_threads(),
                slots=b.slots, max_source=max_source, max_target=LIMITS.max_output_tokens, **knobs))
        else:
            engine = ContinuousEngine(self.translator.model, slots=b.slots, max_source=max_source,
                                      max_target=LIMITS.max_output_tokens)
            engine.configure(**knobs)
            engine.start()
        engine.on_step.append(self.continuous_metrics.record_step)
        self.continuous = engine
        if old is not None:
            threading.Thread(target=_retire, args=(old,), daemon=True).start()

    def _first_target(self) -> str | None:
        return self.pairs[0].split("-")[1] if self.pairs else None

    # -- configuration --------------------------------------------------------------------------
    def reconfigure(self, config: dict) -> None:
        batching = BatchingConfig(**config)
        if batching == self.batching and (self.continuous is not None) == (batching.mode == "continuous"):
            return
        self.batching = batching
        self._run_batch.set_max_batch_size(self.batching.max_batch_tokens)
        self._run_batch.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)
        self.engine.max_batch_tokens = self.batching.max_batch_tokens
        self.engine.max_batch_sentences = self.batching.max_batch_sentences
        self._start_continuous()

    # -- health -----------------------------------------------------------------------------------
    async def check_health(self) -> None:
        """Fails when an engine thread is wedged, or (when idle) cannot translate a word."""
        engine = self.continuous
        if engine is not None and not engine.alive():
            raise RuntimeError("the continuous-batching engine is not running")
        if engine is not None and not engine.idle():
            if time.monotonic() - engine.last_step > STUCK_AFTER_S:
                raise RuntimeError(f"no decoder step for over {STUCK_AFTER_S:.0f}s")
            return
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
        futures, cancel = self._submit(tasks)
        try:
            done: list[SentenceDone] = await asyncio.gather(*futures)
        except BaseException:
            cancel()  # deadline passed or client gone: withdraw what has not finished
            raise
        outs = iter(self._sentence(d.hypotheses) for d in done)
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
        alignments = None
        if job.return_alignment:
            loop = asyncio.get_running_loop()
            alignments = await loop.run_in_executor(self.executor, self._alignments, documents, tasks, done)
        return JobResult(
            texts, scores, alternatives, sentences=len(tasks), input_tokens=sum(len(t.ids) for t in tasks),
            output_tokens=sum(len(d.hypotheses[0].tokens) for d in done),
            queue_s=max((d.queue_s for d in done), default=0.0),
            compute_s=max((d.compute_s for d in done), default=0.0), alignments=alignments,
        )

    def _alignments(self, documents: list[list[textlib.Segment]], tasks: list[SentenceTask],
                    done: list[SentenceDone]) -> list[list[dict]]:
        """Per item, per sentence: token spans and word links, offsets into the item's texts."""
        model, tok = self.translator.model, self.tokenizer
        eos = model.cfg.eos_token_id
        layer = max(0, model.cfg.decoder_layers - 2)
        lang_offset = 1 if tok.language_tokens else 0
        results = iter(zip(tasks, done))
        out: list[list[dict]] = []
        for segments in documents:
            items: list[dict] = []
            pos_in = pos_out = 0
            for seg in segments:
                pos_in += len(seg.before)
                pos_out += len(seg.before)
                if textlib.visible(seg.text):
                    task, d = next(results)
                    ids = d.hypotheses[0].tokens
                    text = tok.decode(ids)
                    cross = attention_maps(model, task.ids, [*ids, eos]).cross[layer].mean(0)  # (T, S)
                    src = alignment.source_spans(tok, seg.text) if textlib.visible(seg.text) == seg.text else []
                    tgt = alignment.target_spans(tok, ids, text)
                    links = alignment.align(cross, src, lang_offset, tgt or [], seg.text, text) if src else []
                    items.append({
                        "source": (pos_in, pos_in + len(seg.text)), "target": (pos_out, pos_out + len(text)),
                        "source_tokens": [_shift(sp, pos_in) for sp in src],
                        "target_tokens": None if tgt is None else [_shift(sp, pos_out) for sp in tgt],
                        "links": [{"source": (ln["source"][0] + pos_in, ln["source"][1] + pos_in),
                                   "target": (ln["target"][0] + pos_out, ln["target"][1] + pos_out),
                                   "weight": ln["weight"]} for ln in links],
                    })
                else:
                    text = seg.text
                pos_in += len(seg.text) + len(seg.after)
                pos_out += len(text) + len(seg.after)
            out.append(items)
        return out

    async def attention(self, job: TranslationJob) -> dict:
        """The full attention tensors of one sentence (bounded: 64 tokens each side)."""
        target = self.translator.resolve_target(job.target_lang)
        ids = self.tokenizer.encode_batch([job.texts[0]], target_lang=target)[0]
        if len(ids) > ATTENTION_MAX_TOKENS:
            raise RequestRejected(413, "request_too_large", f"the sentence has {len(ids)} tokens; /v1/attention "
                                  f"takes at most {ATTENTION_MAX_TOKENS}")
        settings = job_settings(self.translator.settings, job).override(max_length=ATTENTION_MAX_TOKENS)
        loop = asyncio.get_running_loop()

        def run() -> dict:
            model, tok = self.translator.model, self.tokenizer
            hyp = self.engine.run([SentenceTask(ids, settings)])[0][0][0]
            eos = model.cfg.eos_token_id
            maps = attention_maps(model, ids, [*hyp.tokens, eos])
            text = tok.decode(hyp.tokens)
            pieces = {i: p for p, i in tok.vocab.items()}
            layer = max(0, model.cfg.decoder_layers - 2)
            documents = [[textlib.Segment("", job.texts[0], "")]]
            align = self._alignments(documents, [SentenceTask(ids, settings)], [SentenceDone([hyp], 0.0, 0.0)])
            return {
                "translation": text, "source_tokens": [pieces.get(i, "<unk>") for i in ids],
                "target_tokens": [tok.target_pieces.get(i, "<unk>") for i in [*hyp.tokens, eos]],
                "encoder": _rounded(maps.encoder), "decoder": _rounded(maps.decoder), "cross": _rounded(maps.cross),
                "alignment_layer": layer, "alignment": align[0][0] if align[0] else None,
            }

        return await loop.run_in_executor(self.executor, run)

    async def translate_stream(self, job: TranslationJob):
        """Each sentence, with the whitespace around it, as soon as it and those before it are done.

        Concatenating the `text` of an item's events gives that item's translation."""
        documents, tasks = self.tasks_for(job)
        futures, cancel = self._submit(tasks)
        pending = iter(futures)
        started = time.monotonic()
        try:
            yield {"event": "start", "items": len(documents), "sentences": len(tasks)}
            output_tokens = 0
            for item, segments in enumerate(documents):
                for index, seg in enumerate(segments):
                    if textlib.visible(seg.text):
                        done: SentenceDone = await next(pending)
                        output_tokens += len(done.hypotheses[0].tokens)
                        text = self._sentence(done.hypotheses).text
                    else:
                        text = seg.text
                    yield {"event": "sentence", "item": item, "segment": index, "text": seg.before + text + seg.after}
            yield {"event": "done", "sentences": len(tasks), "input_tokens": sum(len(t.ids) for t in tasks),
                   "output_tokens": output_tokens, "seconds": time.monotonic() - started}
        finally:
            cancel()  # the client may stop reading early: nothing of this request keeps running

    def _submit(self, tasks: list[SentenceTask]) -> tuple[list[asyncio.Future], Callable[[], None]]:
        """One future per sentence (resolving to SentenceDone), and a function that cancels the rest."""
        bound = self._pending_bound()
        if self.pending >= bound:  # a request that comes below the bound goes in whatever its size
            raise RequestRejected(503, "overloaded", f"the model holds {self.pending} sentences, its bound is "
                                  f"{bound}. Retry later")
        engine = self.continuous if self.batching.mode == "continuous" else None
        if engine is not None and not engine.alive():  # the health check restarts the replica
            raise RequestRejected(503, "overloaded", "the model's engine is not running. Retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in tasks]
        self.pending += len(tasks)
        for fut in futures:
            fut.add_done_callback(self._sentence_left)
        if engine is not None:
            groups: list = []

            def cancel_groups() -> None:
                for g in groups:
                    engine.cancel(g)

            try:
                for task, fut in zip(tasks, futures):
                    holder: list = []
                    holder.append(engine.submit(task.ids, task.settings, _resolver(loop, fut, holder)))
                    groups.append(holder[0])
            except BaseException:
                cancel_groups()  # none of it runs, and every future settles (the pending count with them)
                for fut in futures:
                    fut.cancel()
                raise
            return futures, cancel_groups
        runs = []
        i = 0
        for chunk in make_chunks(tasks, self.batching.max_batch_tokens):
            run = asyncio.ensure_future(self._run_batch(chunk))
            run.add_done_callback(_fan_out(futures[i : i + len(chunk.tasks)]))
            runs.append(run)
            i += len(chunk.tasks)

        def cancel_runs() -> None:
            for run in runs:
                run.cancel()  # a chunk cancelled before its batch starts leaves the batch queue

        return futures, cancel_runs

    def _sentence_left(self, _: asyncio.Future) -> None:
        self.pending -= 1
        self.finished.append(time.monotonic())

    def overloaded(self) -> bool:
        return self.pending >= self._pending_bound()

    def _pending_bound(self) -> int:
        """Sentences this host takes before it sheds: what it finishes in `max_queue_delay_s` at its rate
        of the last RATE_WINDOW_S, but never fewer than its slots (what can run at once: under a light
        load the rate is the load's, not what the host can do), at most `max_pending_sentences`."""
        b = self.batching
        horizon = time.monotonic() - RATE_WINDOW_S
        while self.finished and self.finished[0] < horizon:
            self.finished.popleft()
        by_rate = int(len(self.finished) / RATE_WINDOW_S * b.max_queue_delay_s)
        return min(b.max_pending_sentences, max(b.slots, by_rate))

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


ModelDeployment = serve.deployment(name="model", max_ongoing_requests=64, health_check_period_s=10,
                                   health_check_timeout_s=30)(ModelHost)
