"""Overload, a killed replica, and a long soak: long-running, so behind the `slow` marker
(`pytest -m slow tests/service/test_resilience.py`). Figures go in the issue notes."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import time

import httpx
import pytest

pytestmark = pytest.mark.slow
OK = {"source_lang": "en", "target_lang": "de", "beam_size": 1, "max_length": 12}
# Overload must be the model's: with a light request, 5x the sustainable rate is more HTTP than the
# proxy, ingress and load generator can parse on 2 shared cores, and that is not what is tested.
HEAVY = {"source_lang": "en", "target_lang": "de", "beam_size": 4, "max_length": 32}


def _body(i: int, heavy: bool) -> dict:
    if heavy:
        return {"text": " ".join(f"Sentence {i}, part {k}, for the load test." for k in range(4)), **HEAVY}
    return {"text": f"Sentence {i} for the load test.", **OK}


@pytest.fixture(autouse=True)
def _own_apps_deleted(service):
    """Each test's application goes when it ends: the session's 4 CPUs hold one at a time."""
    from ray import serve

    yield
    for name in set(serve.status().applications) - {"mt"}:
        serve.delete(name)


def _deploy(service, name: str, replicas: int, queued: int):
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app

    spec = ModelSpec(name="tiny", path=str(service.model_dir), pairs=["en-de", "de-en"], num_cpus=0.25, threads=1,
                     num_replicas=replicas, max_ongoing_requests=8, max_queued_requests=queued)
    serve.run(build_app(AppArgs(models=[spec], ingress_max_queued_requests=queued)), name=name,
              route_prefix=f"/{name}")
    return f"{service.url}/{name}"


async def _load(url: str, rate: float, seconds: float, log: list, heavy: bool = False) -> None:
    """Open loop: `rate` requests per second for `seconds`, each outcome appended to `log`."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=2000)) as c:
        start = time.perf_counter()

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/translate", json=_body(i, heavy))
                log.append((t0 - start, r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")))
            except httpx.HTTPError as exc:
                log.append((t0 - start, type(exc).__name__, time.perf_counter() - t0, None))

        tasks = []
        # Request i is due at i / rate: a late wake-up sends the overdue ones at once, so the
        # offered rate holds even when this loop is slow (a plain sleep per request drifts).
        while (now := time.perf_counter() - start) < seconds:
            while len(tasks) < now * rate:
                tasks.append(asyncio.create_task(one(len(tasks))))
            await asyncio.sleep(max(0.0, len(tasks) / rate - (time.perf_counter() - start)))
        await asyncio.gather(*tasks)


def _sustainable_rate(url: str, heavy: bool = False) -> float:
    """Requests per second the app serves with 8 clients in a closed loop for 10 s."""
    async def run() -> float:
        done = 0
        async with httpx.AsyncClient(timeout=60) as c:
            end = time.perf_counter() + 10

            async def client() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    r = await c.post(url + "/v1/translate", json=_body(0, heavy))
                    done += r.status_code == 200

            await asyncio.gather(*(client() for _ in range(8)))
        return done / 10

    return asyncio.run(run())


def _replica_pids(app: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:{app}:model-tiny"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (FileNotFoundError, StopIteration):
            pass
    return total / 1024


@pytest.mark.timeout(900)
def test_overload_gets_fast_503s_and_recovers(service):
    url = _deploy(service, "overload", replicas=1, queued=16)
    rate = _sustainable_rate(url, heavy=True)
    rss_before = _rss_mb(_replica_pids("overload"))
    log: list = []
    asyncio.run(_load(url, 5 * rate, 60, log, heavy=True))
    codes = [c for _, c, _, _ in log]
    assert len(log) >= 0.9 * 5 * rate * 60  # the load generator kept up: the overload was real
    assert set(codes) <= {200, 503}, {c for c in codes if c not in (200, 503)}
    assert all(ra is not None for _, c, _, ra in log if c == 503)  # every 503 says when to come back
    assert codes.count(200) > 0 and codes.count(503) > 0
    assert _rss_mb(_replica_pids("overload")) - rss_before < 200  # bounded queues: bounded memory
    time.sleep(10)  # the load dropped: within 10 s the app is back to full throughput
    assert _sustainable_rate(url, heavy=True) > 0.7 * rate
    shed = sorted(lat for _, c, lat, _ in log if c == 503)
    print(f"overload: sustainable {rate:.1f} rps; at {5 * rate:.1f} rps for 60 s: {codes.count(200)} x 200, "
          f"{codes.count(503)} x 503 (p50 {shed[len(shed) // 2]:.3f} s, p99 {shed[int(0.99 * (len(shed) - 1))]:.3f} s)")


def test_killed_replica_is_replaced_and_only_its_requests_fail(service):
    url = _deploy(service, "killer", replicas=2, queued=256)
    pids = _replica_pids("killer")
    assert len(pids) == 2
    log: list = []

    async def scenario() -> float:
        load = asyncio.create_task(_load(url, 6, 60, log))
        await asyncio.sleep(15)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.perf_counter()
        await load
        return killed_at

    start = time.perf_counter()
    killed = asyncio.run(scenario()) - start
    failed = [(t, c) for t, c, _, _ in log if c != 200]
    # Only requests in flight on the killed replica may fail: a handful, all around the kill.
    assert len(failed) <= 8, failed
    assert all(killed - 5 <= t <= killed + 5 for t, _ in failed), failed
    with httpx.Client(timeout=60) as c:  # their retries succeed
        for _ in failed:
            assert c.post(url + "/v1/translate", json={"text": "Retry.", **OK}).status_code == 200
    deadline = time.time() + 60
    while len(_replica_pids("killer")) < 2 and time.time() < deadline:
        time.sleep(1)
    assert len(_replica_pids("killer")) == 2  # Serve replaced it
    before = [lat for t, c, lat, _ in log if c == 200 and t < killed]
    after = [lat for t, c, lat, _ in log if c == 200 and t > killed + 15]
    p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))]  # noqa: E731
    assert p99(after) < 2 * p99(before) + 0.2
    print(f"replica kill: {len(failed)} failed of {len(log)}; p99 before {p99(before):.3f}s, after {p99(after):.3f}s")


SOAK_MINUTES = float(os.environ.get("MT_SOAK_MINUTES", "0"))


@pytest.mark.skipif(not SOAK_MINUTES, reason="set MT_SOAK_MINUTES=30 to run the soak")
@pytest.mark.timeout(int(SOAK_MINUTES * 60) + 600)  # the suite's 600-s limit is for ordinary tests
def test_soak_memory_is_flat(service):
    minutes = SOAK_MINUTES
    url = _deploy(service, "soak", replicas=1, queued=64)
    pids = _replica_pids("soak")
    samples: list[tuple[float, float]] = []
    log: list = []

    async def scenario() -> None:
        load = asyncio.create_task(_load(url, 4, minutes * 60, log))
        start = time.perf_counter()
        while not load.done():
            samples.append((time.perf_counter() - start, _rss_mb(pids)))
            await asyncio.sleep(10)
        await load

    asyncio.run(scenario())
    warm = [(t, m) for t, m in samples if t > 120]  # after warm-up
    ts, ms = [t for t, _ in warm], [m for _, m in warm]
    slope = statistics.linear_regression(ts, ms).slope * 600  # MB per 10 minutes
    errors = [c for _, c, _, _ in log if c != 200]
    assert not errors and slope < 1.0, (slope, errors[:5])
    assert _replica_pids("soak") == pids  # no restarts
    print(f"soak {minutes} min: {len(log)} requests, RSS slope {slope:.3f} MB / 10 min")
