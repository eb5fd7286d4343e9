"""A real Prometheus server scrapes the service's metrics; PromQL sees exact request counts."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from service.metrics import EXPORTED
from tests.conftest import HOST, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory):
    if not shutil.which(PROMETHEUS):
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus; make sysdeps does it)")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: mt\n    static_configs:\n      - targets: ['{HOST}:{service.metrics_port}']\n"
    )
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address={HOST}:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    try:
        _wait(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _wait(check, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.5)


def _query(url: str, promql: str) -> float:
    result = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def test_promql_counts_requests_and_latency(service, prometheus):
    sel = '{route="/v1/translate",pair="de-en",status="2xx"}'
    counter = f"sum({EXPORTED['requests']}{sel})"
    latency_count = f'sum({EXPORTED["request_latency"]}_count{{route="/v1/translate",pair="de-en"}})'
    # Settle: at least one request of ours scraped, and whatever earlier tests did, before the baseline.
    with service.client() as c:
        c.post("/v1/translate", json={"text": "Los.", "source_lang": "de", "target_lang": "en"})
    _wait(lambda: _query(prometheus, counter) >= 1, 60)
    time.sleep(4)
    base_c, base_l = _query(prometheus, counter), _query(prometheus, latency_count)
    n = 7
    with service.client() as c:
        for i in range(n):
            assert c.post("/v1/translate", json={"text": f"Satz {i}.", "source_lang": "de",
                                                 "target_lang": "en"}).status_code == 200
    _wait(lambda: _query(prometheus, counter) >= base_c + n, 60)
    time.sleep(3)  # and no more than n
    assert _query(prometheus, counter) == base_c + n
    assert _query(prometheus, latency_count) == base_l + n
    # Every model-side metric the dashboards use is scraped too.
    for name in ("batch_sentences", "queue_wait", "encode", "decode", "time_per_output_token"):
        assert _query(prometheus, f"sum({EXPORTED[name]}_count)") > 0, name
    assert _query(prometheus, f"sum({EXPORTED['output_tokens']})") > 0
