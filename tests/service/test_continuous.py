"""Continuous batching: the same tokens as translating each sentence alone, whatever else is in
the batch and whenever it arrives; cancelled and finished sentences free their slots."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import random
import resource

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from service.continuous import ContinuousEngine
from service.scheduler import Cancelled
from tests.helpers import random_sources


def _alone(model, ids: list[int], settings: GenerationSettings):
    return generate(model, torch.tensor([ids]), settings)[0]


def _random_settings(rng: random.Random, pad: int) -> GenerationSettings:
    beam = rng.choice([1, 1, 2, 3, 4])
    return GenerationSettings(beam_size=beam, length_penalty=rng.choice([0.6, 1.0, 1.3]),
                              max_length=rng.choice([6, 12, 30]), num_hypotheses=rng.randint(1, beam),
                              banned_ids=(pad,))


@pytest.mark.parametrize("seed", [0, 1])
def test_same_tokens_as_alone_whatever_the_company(hf_checkpoint, seed):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    rng = random.Random(seed)
    src = random_sources(40, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=seed)
    sentences = [[t for t in row.tolist() if t != cfg.pad_token_id] for row in src]
    settings = [_random_settings(rng, cfg.pad_token_id) for _ in sentences]
    engine = ContinuousEngine(model, slots=12, max_encode_tokens=40, max_source=64, max_target=64)
    results: dict[int, object] = {}
    pending = list(range(len(sentences)))
    while pending or not engine.idle():
        for _ in range(rng.randint(0, 3)):  # arrivals at random steps, mid-way through others
            if pending:
                i = pending.pop(0)
                engine.submit(sentences[i], settings[i], lambda r, i=i: results.__setitem__(i, r))
        engine.step()
    for i, ids in enumerate(sentences):
        expected = _alone(model, ids, settings[i])
        got = results[i]
        assert [h.tokens for h in got] == [h.tokens for h in expected], (i, settings[i])
        assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(got, expected))


def test_cancelled_sentences_free_their_slots(hf_checkpoint):
    path, _ = hf_checkpoint
    model = load_model(path, device="cpu")
    cfg = model.cfg
    src = random_sources(10, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=3)
    engine = ContinuousEngine(model, slots=8, max_source=64, max_target=64)
    results: dict[int, object] = {}
    settings = GenerationSettings(beam_size=4, max_length=60, banned_ids=(cfg.pad_token_id,))
    groups = [engine.submit([t for t in row.tolist() if t != cfg.pad_token_id], settings,
                            lambda r, i=i: results.__setitem__(i, r)) for i, row in enumerate(src)]
    engine.step()
    assert engine.slots_in_use == 8 and engine.waiting == 8  # two beams of 4 running, the rest wait
    for g in groups[:1] + groups[5:]:
        engine.cancel(g)
    engine.step()
    assert isinstance(results[0], Cancelled) and all(isinstance(results[i], Cancelled) for i in range(5, 10))
    while not engine.idle():
        engine.step()
    assert engine.slots_in_use == 0
    for i in range(1, 5):
        assert results[i][0].tokens == _alone(model, groups[i].ids, settings)[0].tokens


def _rss_mb() -> float:
    """Resident memory of live objects: memory the allocator keeps for reuse (model/allocator.py) is
    handed back first, so what is left is what the process still holds."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("n", [2000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_no_slot_or_memory_leak_after_a_burst(tiny_model, n):
    model = load_model(tiny_model, device="cpu")
    cfg = model.cfg
    engine = ContinuousEngine(model, slots=32, max_source=64, max_target=32)
    rng = random.Random(7)
    done = 0

    def finished(_):
        nonlocal done
        done += 1

    def burst(count: int) -> None:
        groups = []
        for _ in range(count):
            ids = [rng.randrange(3, cfg.vocab_size - 1) for _ in range(rng.randint(1, 20))] + [cfg.eos_token_id]
            s = GenerationSettings(beam_size=rng.choice([1, 1, 2, 4]), max_length=rng.choice([4, 16, 31]),
                                   banned_ids=(cfg.pad_token_id,))
            groups.append(engine.submit(ids, s, finished))
            if rng.random() < 0.3:
                engine.step()
            if rng.random() < 0.1:  # a client disconnects
                engine.cancel(rng.choice(groups))
        while not engine.idle():
            engine.step()

    burst(2000)  # warm-up: allocator pools, lazy init, buffers at their high-water mark (200 left +65 MB for later)
    gc.collect()
    start = _rss_mb()
    done = 0
    burst(n)
    gc.collect()
    assert done == n and engine.slots_in_use == 0 and engine.waiting == 0
    assert not engine.scheduler.running
    assert _rss_mb() - start < 50  # back to its starting level (allocator noise allowed)
