"""Continuous batching behind the HTTP API: same answers as request-level batching, streaming in
document order, cancellation, and its metrics."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import time

import httpx
import pytest

from tests.helpers import metric_sum

OK = {"source_lang": "en", "target_lang": "de"}


@pytest.fixture(scope="module")
def cont(service):
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app
    from service.settings import BatchingConfig

    spec = ModelSpec(name="tiny", path=str(service.model_dir), pairs=["en-de", "de-en"], num_cpus=0.5, threads=1)
    # 40 slots: 12 concurrent requests of 3 sentences fit under the host's bound on pending work (at least
    # its slots), so none is shed; beams of up to 4 still make sentences wait for slots and join mid-way.
    args = AppArgs(models=[spec], batching=BatchingConfig(mode="continuous", slots=40))
    serve.run(build_app(args), name="cont", route_prefix="/cont")
    yield service.url + "/cont"
    serve.delete("cont")


def test_continuous_equals_request_level(service, cont):
    bodies = [{"text": [f"Request {i}. It has {i % 3 + 1} parts!", "A dog."], **OK, "beam_size": 1 + i % 4}
              for i in range(24)]

    def both(body: dict) -> tuple[list[str], list[str]]:
        with httpx.Client(timeout=120) as c:
            a = c.post(service.url + "/v1/translate", json=body)
            b = c.post(cont + "/v1/translate", json=body)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        return [t["text"] for t in a.json()["translations"]], [t["text"] for t in b.json()["translations"]]

    with cf.ThreadPoolExecutor(12) as pool:  # concurrent: sentences join the running batch mid-way
        for request_level, continuous in pool.map(both, bodies):
            assert continuous == request_level


def test_streaming_sends_sentences_in_document_order(cont):
    doc = "First sentence. Second one!\n\nA third, after a blank line."
    body = {"text": [doc, "Short."], **OK, "stream": True}
    with httpx.Client(timeout=60) as c:
        whole = c.post(cont + "/v1/translate", json={**body, "stream": False}).json()["translations"]
        with c.stream("POST", cont + "/v1/translate", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    sentences = [e for e in events if e["event"] == "sentence"]
    assert [(e["item"], e["segment"]) for e in sentences] == sorted((e["item"], e["segment"]) for e in sentences)
    for item in range(2):
        assert "".join(e["text"] for e in sentences if e["item"] == item) == whole[item]["text"]


def test_streaming_errors_before_the_first_event_are_http_errors(cont):
    with httpx.Client(timeout=60) as c:
        r = c.post(cont + "/v1/translate", json={"text": "a", "source_lang": "en", "target_lang": "xx",
                                                  "stream": True})
    assert r.status_code == 404


def _gauge(service, name: str) -> float:
    return metric_sum(service.metrics_url, name, 'model="tiny"')


def test_abandoned_requests_free_their_slots(service, cont):
    doc = " ".join(f"Sentence {i} of a long document." for i in range(20))
    body = {"text": [doc] * 4, **OK, "beam_size": 8, "max_length": 60}
    with cf.ThreadPoolExecutor(20) as pool:
        def impatient(_):
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(cont + "/v1/translate", json=body, timeout=0.5)

        list(pool.map(impatient, range(20)))
    deadline = time.time() + 10
    while time.time() < deadline and (_gauge(service, "ray_mt_slots_in_use") > 0
                                      or _gauge(service, "ray_mt_sentences_waiting") > 0):
        time.sleep(0.5)
    # The gauges are set at every engine step; after the last cancelled sentence left, one more
    # request drives a step that shows the empty batch.
    assert httpx.post(cont + "/v1/translate", json={"text": "Hi.", **OK}, timeout=60).status_code == 200
    time.sleep(2.5)
    assert _gauge(service, "ray_mt_slots_in_use") <= 1
    assert _gauge(service, "ray_mt_slots") >= 16
    assert _gauge(service, "ray_mt_kv_cache_bytes") > 0
