"""HTTP service vs the in-process engine on the same workload: the cost of Ray Serve + HTTP.

    python -m loadtests.bench_http [--model DIR] [--requests 256] [--concurrency 16] [--beam 1]

Starts the real service on 127.0.0.1 (Ray, Serve, FastAPI), sends one-sentence requests from
`concurrency` concurrent clients, then runs the same sentences through the engine alone in
batches of `concurrency` (what ideal dynamic batching would form). Prints sentences/s and
p50/p99 latency of both, and the ratios. A benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from loadtests.workload import sample_sentences
from model.translator import EMBEDDED_MODEL, Translator, language_pairs
from service.deployments import job_settings
from service.engine import Engine, SentenceTask
from service.schemas import TranslationJob

HOST = "127.0.0.1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def http_run(url: str, sentences: list[str], concurrency: int, beam: int) -> tuple[float, list[float]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for s in sentences:
        queue.put_nowait(s)
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/v1/translate", json={"text": text, "source_lang": "en", "target_lang": "de",
                                                         "beam_size": beam})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


def engine_run(translator: Translator, sentences: list[str], concurrency: int, beam: int
               ) -> tuple[float, list[float]]:
    job = TranslationJob(tuple(sentences), "en", "de", beam, None, 0, None, 60.0)
    settings = job_settings(translator.settings, job)
    engine = Engine(translator.model)
    target = translator.resolve_target("de")
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(sentences), concurrency):
        t0 = time.perf_counter()
        ids = translator.tokenizer.encode_batch(sentences[i : i + concurrency], target_lang=target)
        hyps, _ = engine.run([SentenceTask(x, settings) for x in ids])
        translator.tokenizer.decode_batch([h[0].tokens for h in hyps])
        latencies += [time.perf_counter() - t0] * len(ids)
    return time.perf_counter() - start, latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import ray
    import torch
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app
    from tests.conftest import free_port

    sentences = sample_sentences(args.requests)
    port = free_port()
    ray.init(_node_ip_address=HOST, include_dashboard=False, configure_logging=False, logging_level="ERROR")
    serve.start(http_options={"host": HOST, "port": port}, logging_config={"log_level": "ERROR"})
    spec = ModelSpec(name="bench", path=args.model, pairs=language_pairs(args.model), threads=args.threads)
    serve.run(build_app(AppArgs(models=[spec])), name="mt", route_prefix="/")
    url = f"http://{HOST}:{port}"
    asyncio.run(http_run(url, sentences[:32], args.concurrency, args.beam))  # warm-up
    http_s, http_lat = asyncio.run(http_run(url, sentences, args.concurrency, args.beam))
    serve.shutdown()
    ray.shutdown()

    torch.set_num_threads(args.threads)
    translator = Translator(args.model, device="cpu")
    engine_run(translator, sentences[:32], args.concurrency, args.beam)  # warm-up
    eng_s, eng_lat = engine_run(translator, sentences, args.concurrency, args.beam)

    rows = {
        "http": {"sentences_per_s": len(sentences) / http_s, "p50_s": statistics.median(http_lat),
                 "p99_s": percentile(http_lat, 0.99)},
        "engine": {"sentences_per_s": len(sentences) / eng_s, "p50_s": statistics.median(eng_lat),
                   "p99_s": percentile(eng_lat, 0.99)},
    }
    print(f"{len(sentences)} one-sentence requests, concurrency {args.concurrency}, beam {args.beam}, "
          f"{args.threads} threads")
    print(f"{'':8} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in rows.items():
        print(f"{name:8} {r['sentences_per_s']:8.1f} {r['p50_s'] * 1e3:8.1f} {r['p99_s'] * 1e3:8.1f}")
    h, e = rows["http"], rows["engine"]
    print(f"overhead: throughput x{e['sentences_per_s'] / h['sentences_per_s']:.2f} lower over HTTP, "
          f"p50 x{h['p50_s'] / e['p50_s']:.2f}, p99 x{h['p99_s'] / e['p99_s']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
