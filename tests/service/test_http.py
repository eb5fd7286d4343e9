"""The HTTP API end to end: real Ray Serve app, real HTTP, real (tiny) model."""

from __future__ import annotations

import concurrent.futures as cf
import re

import httpx
import pytest

from service.deployments import job_settings
from service.engine import Engine, SentenceTask
from service.schemas import LIMITS, TranslationJob
from service.text import join, split


def engine_translate(reference, texts: list[str], target: str, **options) -> list[str]:
    """What the engine alone gives for the same documents and options (split, translate, rejoin)."""
    job = TranslationJob(tuple(texts), "en" if target == "de" else "de", target, options.get("beam_size"),
                         options.get("max_length"), options.get("num_alternatives", 0),
                         options.get("length_penalty"), 60.0)
    settings = job_settings(reference.settings, job)
    engine = Engine(reference.model)
    out = []
    for text in texts:
        segments = split(text)
        sentences = [s.text for s in segments if s.text]
        ids = reference.tokenizer.encode_batch(sentences, target_lang=target) if sentences else []
        hyps, _ = engine.run([SentenceTask(i, settings) for i in ids])
        decoded = iter(reference.tokenizer.decode(h[0].tokens) for h in hyps)
        out.append(join(segments, [next(decoded) if s.text else "" for s in segments]))
    return out


CASES = [
    ({"text": "A man rides a bike.", "source_lang": "en", "target_lang": "de"}, {}),
    ({"text": ["Ein Hund.", "Zwei Katzen spielen im Park!"], "source_lang": "de", "target_lang": "en",
      "beam_size": 3}, {"beam_size": 3}),
    ({"text": "First one. Second one?\n\n  Third, after a blank line.\n", "source_lang": "en", "target_lang": "de",
      "beam_size": 2, "length_penalty": 0.5, "max_length": 12}, {"beam_size": 2, "length_penalty": 0.5,
                                                                    "max_length": 12}),
]


@pytest.mark.parametrize("body,options", CASES)
def test_http_equals_engine(service, reference, body, options):
    with service.client() as c:
        r = c.post("/v1/translate", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    texts = [body["text"]] if isinstance(body["text"], str) else body["text"]
    expected = engine_translate(reference, texts, body["target_lang"], **options)
    assert [t["text"] for t in data["translations"]] == expected
    assert data["model"] == "tiny" and data["usage"]["sentences"] >= len(texts)
    assert data["timings"]["total_s"] >= data["timings"]["compute_s"] > 0


def test_document_layout_is_kept(service):
    doc = "One. Two!\n\n\tThree?  Four.\n"
    with service.client() as c:
        out = c.post("/v1/translate", json={"text": doc, "source_lang": "en", "target_lang": "de"}).json()
    text = out["translations"][0]["text"]
    # Same whitespace skeleton: the blank line, the tab, the double space and the final newline survive.
    assert re.sub(r"\S+", "", text).count("\n") == 3 and "\n\n\t" in text and text.endswith("\n")


def test_scores_and_alternatives(service):
    body = {"text": ["A dog.", "A cat."], "source_lang": "en", "target_lang": "de", "beam_size": 4,
            "num_alternatives": 2, "return_scores": True}
    with service.client() as c:
        data = c.post("/v1/translate", json=body).json()
    for t in data["translations"]:
        assert isinstance(t["score"], float) and t["score"] <= 0
        assert len(t["alternatives"]) == 2
    with service.client() as c:
        plain = c.post("/v1/translate", json={**body, "num_alternatives": 0, "return_scores": False}).json()
    assert all(t["score"] is None and t["alternatives"] is None for t in plain["translations"])


def test_concurrent_requests_batch_together_and_answer_the_right_caller(service, reference):
    texts = [[f"Request {i} sentence {j}." for j in range(1 + i % 3)] for i in range(32)]
    expected = [engine_translate(reference, t, "de") for t in texts]
    before = _histogram_count(service, "ray_mt_batch_requests", above=1)

    def call(i: int) -> list[str]:
        with httpx.Client(base_url=service.url, timeout=60) as c:
            r = c.post("/v1/translate", json={"text": texts[i], "source_lang": "en", "target_lang": "de"})
            assert r.status_code == 200, r.text
            return [t["text"] for t in r.json()["translations"]]

    with cf.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(call, range(32)))
    assert got == expected
    _wait_until(lambda: _histogram_count(service, "ray_mt_batch_requests", above=1) > before,
                "no dynamic batch held more than one request")


def _histogram_count(service, name: str, above: float) -> float:
    """Observations greater than `above` in a histogram, summed over replicas (Ray exports one series each)."""
    text = httpx.get(service.metrics_url, timeout=10).text
    total = le = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_count{"):
            total += float(line.rsplit(" ", 1)[1])
        m = re.match(name + r'_bucket\{.*le="([^"]+)".*\} (\S+)$', line)
        if m and m.group(1) != "+Inf" and float(m.group(1)) == above:
            le += float(m.group(2))
    return total - le


def _wait_until(check, message: str, timeout: float = 30) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def test_models_health_and_docs(service):
    with service.client() as c:
        models = c.get("/v1/models").json()["models"]
        assert models[0]["name"] == "tiny" and sorted(models[0]["pairs"]) == ["de-en", "en-de"]
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.get("/docs").status_code == 200
        schema = c.get("/openapi.json").json()["components"]["schemas"]["TranslateRequest"]["properties"]
    assert schema["beam_size"]["anyOf"][0]["maximum"] == LIMITS.max_beam_size


ERROR_CASES = [
    (422, {"text": "hi", "source_lang": "en", "target_lang": "de", "beam_size": 40}, "`beam_size` must be <= 8"),
    (422, {"text": "hi", "source_lang": "en", "target_lang": "de", "colour": "red"}, "`colour` is not a known field"),
    (422, {"text": "hi", "source_lang": "en", "target_lang": "en"}, "source_lang and target_lang must differ"),
    (422, {"text": [], "source_lang": "en", "target_lang": "de"}, "`text` must have at least 1 items"),
    (422, {"text": "hi", "source_lang": "en", "target_lang": "de", "beam_size": 2, "num_alternatives": 2},
     "num_alternatives must be < beam_size"),
    (422, {"text": "x" * (LIMITS.max_chars + 1), "source_lang": "en", "target_lang": "de"},
     f"must be at most {LIMITS.max_chars} characters"),
    (404, {"text": "hi", "source_lang": "en", "target_lang": "fr"}, "no model serves en-fr"),
    (504, {"text": [" ".join(f"Sentence {i} of a long document." for i in range(30))] * 8, "source_lang": "en",
           "target_lang": "de", "beam_size": 8, "max_length": 100, "timeout": 1.0}, "did not finish within"),
]


@pytest.mark.parametrize("code,body,message", ERROR_CASES)
def test_errors_are_typed_and_the_service_keeps_serving(service, code, body, message):
    with service.client() as c:
        r = c.post("/v1/translate", json=body)
        assert r.status_code == code, r.text
        error = r.json()["error"]
        assert error["code"] == code and message in error["message"]
        ok = c.post("/v1/translate", json={"text": "Still here?", "source_lang": "en", "target_lang": "de"})
        assert ok.status_code == 200


def test_error_names_field_bound_and_given_value(service):
    with service.client() as c:
        detail = c.post("/v1/translate", json={"text": "hi", "source_lang": "en", "target_lang": "de",
                                               "max_length": 4000}).json()["error"]["details"][0]
    assert detail == {"field": "max_length", "message": f"`max_length` must be <= {LIMITS.max_output_tokens}. "
                      "Given: 4000", "bound": LIMITS.max_output_tokens, "given": 4000}


def test_body_too_large_is_413(service):
    big = b'{"text": "' + b"a" * (LIMITS.max_body_bytes + 10) + b'", "source_lang": "en", "target_lang": "de"}'
    with service.client() as c:
        r = c.post("/v1/translate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

        def chunks():
            yield big[: len(big) // 2]
            yield big[len(big) // 2 :]

        r = c.post("/v1/translate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
