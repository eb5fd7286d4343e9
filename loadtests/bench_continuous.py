"""Continuous (iteration-level) vs request-level batching under open-loop load, through the real service.

    python -m loadtests.bench_continuous [--model DIR] [--loads 4 8 16 24 32] [--duration 40] [--beam 1]
                                         [--out reports/continuous]

Requests arrive as a Poisson process (open loop: the client never waits for an answer before
sending the next one), a mix of one-word phrases, sentences and 20-sentence documents drawn from
held-out Multi30k sentences. Each offered load runs against both modes (the same app,
reconfigured), and the script prints completed requests/s, sentences/s and p50/p99 latency, writes
JSON and a PNG (throughput and p99 against offered load, both modes).
A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx

from loadtests.workload import held_out_pairs
from model.translator import EMBEDDED_MODEL, language_pairs

HOST = "127.0.0.1"
MIX = (("phrase", 0.45), ("sentence", 0.45), ("document", 0.10))


def make_requests(n: int, seed: int, beam: int) -> list[tuple[str, dict, int]]:
    """(kind, body, sentences) for n requests."""
    rng = random.Random(seed)
    pairs = held_out_pairs()
    out = []
    for _ in range(n):
        kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        en_de = rng.random() < 0.5
        side = 0 if en_de else 1
        if kind == "phrase":
            text, count = rng.choice(rng.choice(pairs)[side].split()).strip(".,!?"), 1
        elif kind == "sentence":
            text, count = rng.choice(pairs)[side], 1
        else:
            text, count = " ".join(rng.choice(pairs)[side] for _ in range(20)), 20
        body = {"text": text, "source_lang": "en" if en_de else "de", "target_lang": "de" if en_de else "en",
                "beam_size": beam, "timeout": 300}
        out.append((kind, body, count))
    return out


async def open_loop(url: str, rate: float, duration: float, seed: int, beam: int) -> dict:
    rng = random.Random(seed)
    schedule, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        schedule.append(t)
    requests = make_requests(len(schedule), seed, beam)
    latencies: list[float] = []
    sentences = 0
    failures = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=310, limits=limits) as client:
        start = time.perf_counter()

        async def fire(at: float, body: dict, count: int) -> None:
            nonlocal sentences, failures
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/translate", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
                sentences += count
            else:
                failures += 1

        await asyncio.gather(*(fire(at, body, count) for at, (_, body, count) in zip(schedule, requests)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "offered_rps": rate, "requests": len(schedule), "completed": len(latencies), "failures": failures,
        "seconds": elapsed, "rps": len(latencies) / elapsed, "sentences_per_s": sentences / elapsed,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
    }


def deploy(mode: str, args: argparse.Namespace) -> None:
    """(Re)deploy the app in `mode` and warm it up."""
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app
    from service.settings import BatchingConfig

    spec = ModelSpec(name="bench", path=args.model, pairs=language_pairs(args.model), threads=args.threads,
                     max_ongoing_requests=1000, max_queued_requests=-1)
    app = build_app(AppArgs(models=[spec], batching=BatchingConfig(mode=mode), ingress_max_queued_requests=-1))
    serve.run(app, name="mt", route_prefix="/")
    asyncio.run(open_loop(args.url, 2.0, 5.0, 99, args.beam))


def compare(results: dict[str, list[dict]], p99_limit: float) -> dict:
    """The issue's criterion: at the lowest load where request mode's p99 exceeds the limit,
    continuous mode should give >= 1.5x the throughput or <= half the p99."""
    request, continuous = results.get("request", []), results.get("continuous", [])
    at = next((i for i, row in enumerate(request) if row["p99_s"] > p99_limit), None)
    if at is None or at >= len(continuous):
        return {"load": None, "summary": f"request mode stayed within p99 {p99_limit} s at every load: no verdict"}
    r, c = request[at], continuous[at]
    throughput = c["sentences_per_s"] / r["sentences_per_s"]
    p99 = c["p99_s"] / r["p99_s"]
    met = throughput >= 1.5 or p99 <= 0.5
    return {"load": r["offered_rps"], "throughput_ratio": throughput, "p99_ratio": p99, "met": met,
            "summary": f"at {r['offered_rps']} req/s (request mode's p99 {r['p99_s']:.2f} s > {p99_limit} s): "
                       f"continuous/request throughput {throughput:.2f}x, p99 {p99:.2f}x -> "
                       f"target (>= 1.5x or <= 0.5x) {'met' if met else 'MISSED'}"}


def plot(results: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, rows in results.items():
        x = [r["offered_rps"] for r in rows]
        a.plot(x, [r["sentences_per_s"] for r in rows], marker="o", label=mode)
        b.plot(x, [r["p99_s"] for r in rows], marker="o", label=mode)
    a.set(xlabel="offered load (requests/s)", ylabel="sentences/s completed", title="throughput")
    b.set(xlabel="offered load (requests/s)", ylabel="p99 latency (s)", title="p99 latency", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--loads", type=float, nargs="+", default=[4.0, 8.0, 16.0, 24.0, 32.0])
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["request", "continuous"])
    parser.add_argument("--p99-limit", type=float, default=2.0,
                        help="latency objective (s): the comparison is made where request mode first exceeds it")
    parser.add_argument("--out", default="reports/continuous")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from tests.conftest import free_port

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ray.init(_node_ip_address=HOST, include_dashboard=False, configure_logging=False, logging_level="ERROR")
    serve.start(http_options={"host": HOST, "port": port}, logging_config={"log_level": "ERROR"})
    args.url = f"http://{HOST}:{port}"
    results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    try:
        # Modes alternate at each load, so both see the same machine state (it is shared and noisy).
        for rate in args.loads:
            for mode in args.modes:
                deploy(mode, args)
                row = asyncio.run(open_loop(args.url, rate, args.duration, int(rate * 1000), args.beam))
                results[mode].append(row)
                print(f"{mode:10} offered {rate:5.2f} rps: {row['rps']:6.2f} rps, {row['sentences_per_s']:6.2f} "
                      f"sent/s, p50 {row['p50_s']:6.2f}s, p99 {row['p99_s']:6.2f}s, failures {row['failures']}",
                      flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    verdict = compare(results, args.p99_limit)
    print(verdict["summary"])
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results, "verdict": verdict}, indent=1) + "\n")
    plot(results, out / "continuous_vs_request.png")
    print(f"wrote {out / 'results.json'} and {out / 'continuous_vs_request.png'}")


if __name__ == "__main__":
    main()
