"""The CUDA path: run by `make gpu-check` on a machine with a GPU; skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from service.continuous import ContinuousEngine
from service.engine import Engine, SentenceTask
from tests.helpers import random_sources

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fp32_on_cuda_equals_cpu(hf_checkpoint):
    path, _ = hf_checkpoint
    cpu = load_model(path, device="cpu")
    gpu = load_model(path, device="cuda", dtype=torch.float32)
    cfg = cpu.cfg
    src = random_sources(32, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=1)
    for beams in (1, 4):
        settings = GenerationSettings.from_checkpoint(path, cfg.pad_token_id).override(beam_size=beams)
        a = [h[0].tokens for h in generate(cpu, src, settings)]
        b = [h[0].tokens for h in generate(gpu, src.cuda(), settings)]
        agree = sum(x == y for x, y in zip(a, b)) / len(a)
        assert agree >= 0.95, agree  # TF32/cuBLAS rounding may flip a rare near-tie


def test_fp16_defaults_and_agrees(hf_checkpoint):
    path, _ = hf_checkpoint
    gpu = load_model(path)  # device and dtype chosen at load: CUDA, float16
    assert next(gpu.parameters()).dtype == torch.float16 and next(gpu.parameters()).is_cuda
    cpu = load_model(path, device="cpu")
    cfg = cpu.cfg
    src = random_sources(32, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=2)
    settings = GenerationSettings.from_checkpoint(path, cfg.pad_token_id)
    a = [h[0].tokens for h in generate(cpu, src, settings)]
    b = [h[0].tokens for h in generate(gpu, src.cuda(), settings)]
    assert sum(x == y for x, y in zip(a, b)) / len(a) >= 0.8


def test_out_of_memory_splits_the_batch(hf_checkpoint):
    """With GPU memory capped, a batch too big for it is split and retried; nothing fails."""
    path, _ = hf_checkpoint
    model = load_model(path, device="cuda", dtype=torch.float32)
    cfg = model.cfg
    src = random_sources(256, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=3, max_len=120)
    tasks = [SentenceTask([t for t in row.tolist() if t != cfg.pad_token_id],
                          GenerationSettings(beam_size=8, max_length=120, banned_ids=(cfg.pad_token_id,)))
             for row in src]
    engine = Engine(model, max_batch_tokens=10**7, max_batch_sentences=10**6)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 64 * 2**20) / total))
    try:
        results, stats = engine.run(tasks)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert all(r for r in results) and len(stats) > 1  # it had to split
    assert engine.max_batch_tokens < 10**7  # and the budget shrank


def test_continuous_engine_on_cuda(hf_checkpoint):
    path, _ = hf_checkpoint
    model = load_model(path, device="cuda", dtype=torch.float32)
    cfg = model.cfg
    src = random_sources(16, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=5)
    engine = ContinuousEngine(model, slots=16, max_source=64, max_target=64)
    out: dict[int, object] = {}
    settings = GenerationSettings(beam_size=2, max_length=20, banned_ids=(cfg.pad_token_id,))
    for i, row in enumerate(src):
        ids = [t for t in row.tolist() if t != cfg.pad_token_id]
        engine.submit(ids, settings, lambda r, i=i: out.__setitem__(i, r))
    while not engine.idle():
        engine.step()
    for i, row in enumerate(src):
        alone = generate(model, row[row != cfg.pad_token_id][None].cuda(), settings)[0][0].tokens
        assert out[i][0].tokens == alone
