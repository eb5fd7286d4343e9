"""The continuous engine in its own process: the same tokens as translating alone, cancellation
across the pipe, and a dead engine process fails what it held instead of hanging it; the
scheduler admits newcomers together."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from service.engine_process import EngineGone, EngineProcess, EngineSpec
from service.scheduler import Cancelled, Scheduler, SequenceGroup


def _spec(path, **kw) -> EngineSpec:
    base = dict(path=str(path), device="cpu", dtype=None, threads=1, slots=8, max_active_tokens=4096,
                max_encode_tokens=512, max_source=64, max_target=64, admit_batch=4, admit_wait_s=0.01)
    return EngineSpec(**{**base, **kw})


def _collect(engine: EngineProcess, items: list[tuple[list[int], GenerationSettings]], timeout: float = 60):
    results: dict[int, object] = {}
    done = threading.Event()

    def callback(i: int):
        def cb(result) -> None:
            results[i] = result
            if len(results) == len(items):
                done.set()
        return cb

    tickets = [engine.submit(ids, s, callback(i)) for i, (ids, s) in enumerate(items)]
    assert done.wait(timeout), f"{len(results)} of {len(items)} finished"
    return results, tickets


def test_same_tokens_as_alone(tiny_model):
    model = load_model(tiny_model, device="cpu")
    from model.tokenizer import MarianTokenizer

    tok = MarianTokenizer(tiny_model)
    texts = [f"Sentence number {i} is here." for i in range(12)]
    ids = tok.encode_batch(texts, target_lang="de")
    settings = [GenerationSettings(beam_size=1 + i % 3, max_length=20, num_hypotheses=1,
                                   banned_ids=(model.cfg.pad_token_id,)) for i in range(len(ids))]
    engine = EngineProcess(_spec(tiny_model))
    try:
        results, tickets = _collect(engine, list(zip(ids, settings)))
        for i, (x, s) in enumerate(zip(ids, settings)):
            expected = generate(model, torch.tensor([x]), s)[0]
            assert [h.tokens for h in results[i]] == [h.tokens for h in expected]
            assert tickets[i].admitted is not None and tickets[i].admitted >= tickets[i].arrived - 1
        assert engine.idle()
    finally:
        engine.stop()
    assert not engine.process.is_alive()


def test_cancel_crosses_the_pipe(tiny_model):
    engine = EngineProcess(_spec(tiny_model, slots=1))
    try:
        settings = GenerationSettings(beam_size=1, max_length=60, min_length=60, num_hypotheses=1)
        got: list = []
        first = engine.submit([5, 6, 7, 0], settings, got.append)
        queued = engine.submit([8, 9, 0], settings, got.append)  # waits: one slot
        engine.cancel(queued)
        engine.cancel(first)
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) == 2 and all(isinstance(r, Cancelled) for r in got)
    finally:
        engine.stop()


def test_a_dead_engine_process_fails_what_it_held(tiny_model):
    engine = EngineProcess(_spec(tiny_model, slots=1))
    got: list = []
    ev = threading.Event()
    engine.submit([5, 6, 7, 0], GenerationSettings(beam_size=1, max_length=60, min_length=60, num_hypotheses=1),
                  lambda r: (got.append(r), ev.set()))
    os.kill(engine.process.pid, signal.SIGKILL)
    assert ev.wait(30)
    assert isinstance(got[0], EngineGone)
    engine.reader.join(10)
    assert not engine.alive() and engine.idle()
    engine.stop()


@pytest.mark.parametrize("waiting, waited, due", [(1, 0.0, False), (4, 0.0, True), (1, 1.0, True)])
def test_newcomers_join_together_while_others_run(waiting, waited, due):
    sched = Scheduler(slots=16, max_active_tokens=10_000, max_encode_tokens=10_000, admit_batch=4,
                      admit_wait_s=0.5)
    settings = GenerationSettings(beam_size=1)
    sched.running.append(SequenceGroup([1, 2, 0], settings, lambda r: None, 10))
    for _ in range(waiting):
        sched.add(SequenceGroup([3, 0], settings, lambda r: None, 10, arrived=time.monotonic() - waited))
    assert bool(sched.schedule().admit) == due
    idle = Scheduler(slots=16, max_active_tokens=10_000, max_encode_tokens=10_000, admit_batch=4, admit_wait_s=0.5)
    idle.add(SequenceGroup([3, 0], settings, lambda r: None, 10))
    assert len(idle.schedule().admit) == 1  # nothing runs: no reason to wait
