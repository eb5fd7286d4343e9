"""The request mix against the real service: every valid type gets its 200, every invalid request the
status the API documents for it. If the API changes its codes, this fails before a load run does."""

from __future__ import annotations

import random

import pytest

from loadtests.mix import INVALID, MIX, Call, Corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus()


def _send(client, call: Call):
    if call.data is not None:
        return client.request(call.method, call.path, content=call.data, headers=call.headers)
    return client.request(call.method, call.path, json=call.json, headers=call.headers)


def test_corpus_is_held_out_multi30k_in_both_languages(corpus):
    if not corpus.from_multi30k:
        pytest.skip("../shared/data/multi30k is absent: the built-in fallback sentences are used")
    assert len(corpus.sentences["en"]) == len(corpus.sentences["de"]) > 1000
    assert corpus.sentences["en"][0] != corpus.sentences["de"][0]


@pytest.mark.parametrize("name", [n for n in MIX if n != "invalid"])
def test_every_type_is_answered_correctly(service, corpus, name):
    rng = random.Random(name)
    calls = [MIX[name][1](corpus, rng) for _ in range(3)]
    assert all(c.name == name for c in calls)
    if name != "languages":  # traffic goes both ways
        pairs = {(c.json.get("source_lang", c.json.get("source")), c.json.get("target_lang", c.json.get("target")))
                 for c in [MIX[name][1](corpus, rng) for _ in range(40)]}
        assert pairs == {("en", "de"), ("de", "en")}
    with service.client() as c:
        for call in calls:
            r = _send(c, call)
            assert call.check(r.status_code, r.text) is None, (call, r.status_code, r.text[:300])


@pytest.mark.parametrize("n", range(len(INVALID)))
def test_every_invalid_request_gets_its_documented_status(service, corpus, n):
    call = INVALID[n](corpus, random.Random(n))
    with service.client() as c:
        r = _send(c, call)
    assert call.check(r.status_code, r.text) is None, (call.json, call.data, r.status_code, r.text[:300])


def test_check_reports_what_is_wrong_without_the_text():
    call = Call("sentence", "POST", "/v1/translate", json={"text": "secret"})
    assert call.check(200, '{"translations": [{"text": "x"}]}') is None
    assert call.check(503, '{"error": {"type": "overloaded"}}') == "expected 200, got 503 (overloaded)"
    assert call.check(200, '{"translations": []}') == "expected 1 translations"
    assert call.check(200, "<html>") == "200 with a body that is not JSON"
    bad = Call("invalid", "POST", "/v1/translate", expect=422)
    assert bad.check(422, '{"error": {"code": 422}}') is None
    assert bad.check(200, '{"translations": []}') == "expected 422, got 200"
