"""HTTP service vs the engine alone, same sentences, same machine: what a request costs, and where.

    python -m loadtests.bench_http [--model DIR] [--seconds 15] [--idle-seconds 60] [--json FILE]

1. Starts the service as `make serve` does (`python -m service.run` on 127.0.0.1, free ports).
2. Over HTTP (the client is in this process, on the same cores, at the service's niceness): one
   client sending a short sentence (greedy and beam 4); `--clients` clients in a closed loop of
   one-sentence requests, with the CPU seconds each process spent per request (from /proc); more
   clients (`--peak-search`) to find the peak; then 2x, 4x and 8x the peak's clients (each honours
   Retry-After, as real clients do): completed requests/s against the peak, 503s and how fast they
   came, p99 of the admitted; then the idle service's CPU over `--idle-seconds`.
3. Stops the service, then runs the engine alone in this process on the same sentences: batches
   of `--clients` (what perfect batching would form), and the short sentence one at a time,
   with CTranslate2 on the same weights beside it.
A benchmark, not a test: the numbers depend on the machine. The targets it checks are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from loadtests.run import Service
from loadtests.workload import sample_sentences
from model.translator import EMBEDDED_MODEL, Translator

SHORT = "A dog runs."


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def body(text: str, beam: int) -> dict:
    return {"text": text, "source_lang": "en", "target_lang": "de", "beam_size": beam}


async def closed_loop(url: str, texts: list[str], clients: int, seconds: float, beam: int = 1) -> dict:
    """`clients` clients, each sending its next request when the last is answered (after
    Retry-After on a 503), for `seconds`. aiohttp, not httpx: httpx's pool costs the client more
    CPU per request than the service spends once a few dozen requests are in flight, and the
    client then measures itself."""
    ok: list[float] = []
    shed: list[float] = []
    other: list = []
    end = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        i = k
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/v1/translate", json=body(texts[i % len(texts)], beam)) as r:
                    await r.read()
                    status, headers = r.status, r.headers
            except aiohttp.ClientError as exc:
                other.append(type(exc).__name__)
                await asyncio.sleep(0.1)  # no answer at all: do not spin on a service that is not there
                continue
            dt = time.perf_counter() - t0
            i += clients
            if status == 200:
                ok.append(dt)
            elif status == 503 and "Retry-After" in headers and headers.get("Content-Type", "").startswith(
                    "application/json"):
                shed.append(dt)
                await asyncio.sleep(float(headers["Retry-After"]))
            else:
                other.append(status)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session, k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": elapsed, "completed_per_s": len(ok) / elapsed, "completed": len(ok),
            "p50_s": pct(ok, 0.5), "p99_s": pct(ok, 0.99), "shed": len(shed), "shed_max_s": max(shed, default=0.0),
            "errors": len(other)}


# -- CPU per process, from /proc -----------------------------------------------------------------------------------
def cpu_times() -> dict[int, tuple[str, float]]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(pid)] = (role(cmd), (int(fields[11]) + int(fields[12])) / tick)
    return out


def role(cmd: str) -> str:
    for key, name in (("spawn_main", "engine process"), ("ServeReplica", "model replica (HTTP, tokenization)"),
                      ("ProxyActor", "Serve proxy"), ("ServeController", "Serve controller"),
                      ("gcs_server", "Ray GCS"), ("raylet", "raylet"), ("DashboardAgent", "Ray agents"),
                      ("dashboard", "Ray agents"), ("log_monitor", "Ray agents"), ("service.run", "driver")):
        if key in cmd:
            return name
    return "ray::" if cmd.startswith("ray::") else "other"


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    me = os.getpid()
    roles: dict[str, float] = {}
    for pid, (name, t) in after.items():
        if pid != me and pid in before and name != "other":
            roles[name] = roles.get(name, 0.0) + t - before[pid][1]
    return roles


# -- the engine alone ----------------------------------------------------------------------------------------------
def engine_alone(model: str, texts: list[str], batch: int, seconds: float, threads: int) -> dict:
    """Sentences/s of the batch engine on batches of `batch`, tokenization and detokenization included."""
    import torch

    from service.engine import Engine, SentenceTask

    torch.set_num_threads(threads)
    tr = Translator(model, device="cpu")
    engine = Engine(tr.model)
    settings = tr.settings.override(beam_size=1, num_hypotheses=1)
    target = tr.resolve_target("de")
    done, i = 0, 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        ids = tr.tokenizer.encode_batch(chunk, target_lang=target)
        hyps, _ = engine.run([SentenceTask(x, settings) for x in ids])
        tr.tokenizer.decode_batch([h[0].tokens for h in hyps])
        done += batch
        i += batch
    return {"threads": threads, "sentences_per_s": done / (time.perf_counter() - start)}


def one_sentence(model: str, beam: int, runs: int, threads: int) -> dict:
    """p50 ms of one short sentence through our engine and through CTranslate2, tokenization included."""
    import ctranslate2
    import torch

    from loadtests.bench_engine import convert_ct2
    from service.engine import Engine, SentenceTask

    torch.set_num_threads(threads)
    tr = Translator(model, device="cpu")
    engine = Engine(tr.model)
    settings = tr.settings.override(beam_size=beam, num_hypotheses=1)
    target = tr.resolve_target("de")

    def ours() -> str:
        ids = tr.tokenizer.encode_batch([SHORT], target_lang=target)
        hyps, _ = engine.run([SentenceTask(ids[0], settings)])
        return tr.tokenizer.decode(hyps[0][0].tokens)

    with tempfile.TemporaryDirectory() as tmp:
        ct2 = ctranslate2.Translator(str(convert_ct2(Path(model), Path(tmp) / "ct2", None)), device="cpu",
                                     intra_threads=threads, inter_threads=1)
        pieces = {i: p for p, i in tr.tokenizer.vocab.items()}

        def theirs() -> str:
            ids = tr.tokenizer.encode_batch([SHORT], target_lang=target)[0]
            out = ct2.translate_batch([[pieces[i] for i in ids]], beam_size=beam, max_decoding_length=256)
            return tr.tokenizer.decode([tr.tokenizer.target_vocab[p] for p in out[0].hypotheses[0]])

        times: dict[str, list[float]] = {"ours": [], "ctranslate2": []}
        for _ in range(5):
            ours(), theirs()
        for _ in range(runs):  # interleaved: both see the same machine
            for name, fn in (("ours", ours), ("ctranslate2", theirs)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {"beam": beam, **{f"{k}_p50_s": statistics.median(v) for k, v in times.items()}}


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--clients", type=int, default=16, help="the concurrency compared with batches of this size")
    parser.add_argument("--seconds", type=float, default=15, help="length of each load phase")
    parser.add_argument("--single-requests", type=int, default=100, help="requests of the one-client phases")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--peak-search", type=int, nargs="*", default=[32, 64],
                        help="more client counts tried for the peak (besides --clients)")
    parser.add_argument("--overload", type=int, nargs="*", default=[2, 4, 8], help="multiples of the peak's clients")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the engine alone")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    texts = sample_sentences(1024)
    out: dict = {"args": vars(args)}

    # The service's processes run at Ray's worker niceness (15); a load generator at 0 on the same cores
    # would take the CPU from them whenever it is busy, which no remote client does.
    os.nice(max(0, 15 - os.nice(0)))
    log = Path(tempfile.mkdtemp()) / "service.log"
    service = Service(args.model, None, log, threads=0, replicas=1)
    try:
        service.wait_ready(600)
        url = service.url
        asyncio.run(closed_loop(url, texts, args.clients, 5))  # warm-up
        for beam in (1, 4):
            out[f"http_one_client_beam{beam}"] = asyncio.run(_single(url, beam, args))
        before = cpu_times()
        peak = asyncio.run(closed_loop(url, texts, args.clients, args.seconds))
        roles = cpu_by_role(before, cpu_times())
        peak["cpu_ms_per_request"] = {k: v / max(peak["completed"], 1) * 1e3 for k, v in roles.items()}
        out["http_peak"] = peak
        levels = [peak] + [asyncio.run(closed_loop(url, texts, n, args.seconds)) for n in args.peak_search
                           if n != args.clients]
        best = max(levels, key=lambda r: r["completed_per_s"])
        out["peak_search"], out["best"] = levels, best
        out["overload"] = [asyncio.run(closed_loop(url, texts, best["clients"] * m, args.seconds))
                           for m in args.overload]
        time.sleep(5)
        before, t0 = cpu_times(), time.perf_counter()
        time.sleep(args.idle_seconds)
        idle = cpu_by_role(before, cpu_times())
        out["idle_cpu_percent_of_one_core"] = sum(idle.values()) / (time.perf_counter() - t0) * 100
        out["idle_cpu_by_role"] = {k: v / (time.perf_counter() - t0) * 100 for k, v in idle.items()}
    finally:
        service.stop()

    out["engine_alone"] = engine_alone(args.model, texts, args.clients, args.seconds, args.threads)
    out["engine_one_sentence"] = [one_sentence(args.model, beam, args.single_requests, args.threads) for beam in (1, 4)]
    report(out, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


async def _single(url: str, beam: int, args: argparse.Namespace) -> dict:
    """One client, the short sentence, one request after the other."""
    lat: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for _ in range(5):
            await c.post("/v1/translate", json=body(SHORT, beam))
        for _ in range(args.single_requests):
            t0 = time.perf_counter()
            (await c.post("/v1/translate", json=body(SHORT, beam))).raise_for_status()
            lat.append(time.perf_counter() - t0)
    return {"beam": beam, "p50_s": statistics.median(lat), "p99_s": pct(lat, 0.99)}


def report(out: dict, args: argparse.Namespace) -> None:
    ms = 1e3
    peak, alone = out["http_peak"], out["engine_alone"]
    ratio = peak["completed_per_s"] / alone["sentences_per_s"]
    print(f"\n{args.clients} clients, one-sentence requests, greedy, {args.seconds:.0f} s a phase")
    print(f"  HTTP:        {peak['completed_per_s']:7.1f} sentences/s   p50 {peak['p50_s'] * ms:6.0f} ms   "
          f"p99 {peak['p99_s'] * ms:6.0f} ms")
    print(f"  engine alone ({alone['threads']} threads, batches of {args.clients}): "
          f"{alone['sentences_per_s']:7.1f} sentences/s")
    print(f"  HTTP / engine: {ratio:.2f}  (target >= 0.8: {'met' if ratio >= 0.8 else 'missed'})")
    print("  CPU per request, by process (ms; the client's own is not counted):")
    for name, v in sorted(peak["cpu_ms_per_request"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:38} {v:6.1f}")
    front = sum(v for k, v in peak["cpu_ms_per_request"].items() if k != "engine process")
    print(f"  front end (everything but the engine): {front:.1f} ms CPU a request -> one core feeds "
          f"~{1e3 / front:.0f} requests/s to an engine" if front else "")
    print("\nOne client, a short sentence (\"A dog runs.\"), p50 ms:")
    for single in out["engine_one_sentence"]:
        beam = single["beam"]
        http = out[f"http_one_client_beam{beam}"]
        gap = (http["p50_s"] - single["ours_p50_s"]) * ms
        print(f"  beam {beam}: HTTP {http['p50_s'] * ms:6.1f} (p99 {http['p99_s'] * ms:6.1f})   engine alone "
              f"{single['ours_p50_s'] * ms:6.1f}   CTranslate2 {single['ctranslate2_p50_s'] * ms:6.1f}   "
              f"HTTP - engine {gap:5.1f} (target <= 10: {'met' if gap <= 10 else 'missed'}); engine / CTranslate2 "
              f"{single['ours_p50_s'] / single['ctranslate2_p50_s']:.2f} (target <= 1)")
    best = out["best"]
    print("\nClosed loop by clients: " + ", ".join(
        f"{r['clients']}: {r['completed_per_s']:.1f}/s (p50 {r['p50_s'] * ms:.0f}, p99 {r['p99_s'] * ms:.0f} ms)"
        for r in out["peak_search"]))
    print(f"Overload (clients honour Retry-After), against the peak {best['completed_per_s']:.1f}/s, p99 "
          f"{best['p99_s'] * ms:.0f} ms at {best['clients']} clients:")
    for o in out["overload"]:
        keep, tail = o["completed_per_s"] / best["completed_per_s"], o["p99_s"] / best["p99_s"]
        print(f"  {o['clients']:4} clients: {o['completed_per_s']:6.1f}/s ({keep:.2f} of peak, target >= 0.9), "
              f"{o['shed']} shed with JSON 503 (slowest {o['shed_max_s'] * ms:.0f} ms, target < 1000), p99 admitted "
              f"{o['p99_s'] * ms:.0f} ms ({tail:.2f}x, target <= 2), other errors {o['errors']}")
    idle = out["idle_cpu_percent_of_one_core"]
    print(f"\nIdle: {idle:.1f}% of one core over {args.idle_seconds:.0f} s (target <= 5): "
          + ", ".join(f"{k} {v:.1f}%" for k, v in sorted(out["idle_cpu_by_role"].items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
