"""Every limit at its bound: exactly at the limit passes, one over fails, and the OpenAPI
document states it."""

from __future__ import annotations

import json

import pytest

from service.schemas import LIMITS

OK = {"source_lang": "en", "target_lang": "de", "beam_size": 1}
WORDS = "the man and the dog in the park "  # common pieces: about 4 characters per token


def post(service, payload=None, raw=None, **kw):
    with service.client() as c:
        if raw is not None:
            return c.post("/v1/translate", content=raw, headers={"content-type": "application/json"})
        return c.post("/v1/translate", json=payload, **kw)


def test_every_limit_is_in_the_openapi_document(service):
    with service.client() as c:
        spec = c.get("/openapi.json").json()
    description = spec["info"]["description"]
    for name in type(LIMITS).model_fields:
        assert f"| `{name}` | {getattr(LIMITS, name)} |" in description
    props = spec["components"]["schemas"]["TranslateRequest"]["properties"]
    assert props["num_alternatives"]["maximum"] == LIMITS.max_alternatives
    assert props["max_length"]["anyOf"][0]["maximum"] == LIMITS.max_output_tokens
    assert props["timeout"]["anyOf"][0]["maximum"] == LIMITS.max_timeout_s


@pytest.mark.parametrize("field,at,over", [
    ("beam_size", LIMITS.max_beam_size, LIMITS.max_beam_size + 1),
    ("max_length", LIMITS.max_output_tokens, LIMITS.max_output_tokens + 1),
    ("timeout", LIMITS.max_timeout_s, LIMITS.max_timeout_s + 0.5),
])
def test_numeric_option_bounds(service, field, at, over):
    assert post(service, {"text": "A dog.", **OK, field: at}).status_code == 200
    r = post(service, {"text": "A dog.", **OK, field: over})
    assert r.status_code == 422 and f"`{field}` must be <=" in r.json()["error"]["message"]


def test_alternatives_bound(service):
    n = LIMITS.max_alternatives
    at = post(service, {"text": "A dog.", **OK, "beam_size": n + 1, "num_alternatives": n})
    assert at.status_code == 200 and len(at.json()["translations"][0]["alternatives"]) == n
    assert post(service, {"text": "A dog.", **OK, "beam_size": n + 2, "num_alternatives": n + 1}).status_code == 422


def test_max_chars_bound(service):
    text = (WORDS * (LIMITS.max_chars // len(WORDS) + 1))[: LIMITS.max_chars]
    assert post(service, {"text": text, **OK, "max_length": 8}).status_code == 200
    r = post(service, {"text": text + "a", **OK})
    assert r.status_code == 422 and f"at most {LIMITS.max_chars} characters" in r.json()["error"]["message"]
    half = LIMITS.max_chars // 2
    assert post(service, {"text": [text[:half], text[: half + 1]], **OK}).status_code == 422  # counted together


def test_body_size_bound(service):
    def sized(n: int) -> bytes:
        skeleton = json.dumps({"text": "", **OK}).encode()
        return json.dumps({"text": "a" * (n - len(skeleton)), **OK}).encode()

    at = sized(LIMITS.max_body_bytes)
    assert len(at) == LIMITS.max_body_bytes
    assert post(service, raw=at).status_code != 413  # (422: too many characters, but not too large a body)
    assert post(service, raw=sized(LIMITS.max_body_bytes + 1)).status_code == 413


def test_json_depth_bound(service):
    def deep(levels: int) -> bytes:  # the body object is level 1; `text` nests lists below it
        value: object = "a"
        for _ in range(levels - 1):
            value = [value]
        return json.dumps({"text": value, **OK}).encode()

    assert post(service, raw=deep(LIMITS.max_json_depth)).status_code == 422  # deep enough: wrong type, not depth
    assert "levels deep" not in post(service, raw=deep(LIMITS.max_json_depth)).text
    r = post(service, raw=deep(LIMITS.max_json_depth + 1))
    assert r.status_code == 422 and f"at most {LIMITS.max_json_depth} levels deep" in r.text


def _tokens(reference, text: str) -> int:
    return len(reference.tokenizer.encode_batch([text], target_lang="de")[0])


def test_sentence_token_bound_splits_instead_of_truncating(service, reference):
    with service.client() as c:
        limit = c.get("/v1/models").json()["models"][0]["max_source_tokens"]  # the model's positions may be fewer
    assert limit == min(LIMITS.max_sentence_tokens, reference.model.cfg.max_position_embeddings)
    words = WORDS.split()
    text, i = "", 0
    while _tokens(reference, text + " " + words[i % len(words)] if text else words[0]) <= limit:
        text = text + " " + words[i % len(words)] if text else words[0]
        i += 1
    assert _tokens(reference, text) <= limit
    longer = text + " " + words[i % len(words)]
    assert _tokens(reference, longer) == limit + 1 or _tokens(reference, longer) > limit
    at = post(service, {"text": text, **OK, "max_length": 4}).json()
    over = post(service, {"text": longer, **OK, "max_length": 4}).json()
    assert at["usage"]["sentences"] == 1
    assert over["usage"]["sentences"] == 2  # split at a space, every word still translated
    assert over["usage"]["input_tokens"] >= at["usage"]["input_tokens"]


def test_request_token_bound(service, reference):
    """Token-dense text (emoji become byte pieces) reaches the token limit long before the character limit."""
    limit = LIMITS.max_request_tokens
    texts: list[str] = []
    total = 0
    while limit - total > 200:
        texts.append("🍕" * 30)
        total += _tokens(reference, texts[-1])
    fillers = ["🍕" * k for k in range(1, 31)] + [" ".join(["a"] * j) for j in range(1, 120)]
    while total < limit:
        room = limit - total
        best = max((f for f in fillers if _tokens(reference, f) <= room), key=lambda f: _tokens(reference, f))
        texts.append(best)
        total += _tokens(reference, best)
    assert total == limit, "could not build a request of exactly the limit"
    assert sum(map(len, texts)) < LIMITS.max_chars and len(texts) <= LIMITS.max_items
    assert post(service, {"text": texts, **OK, "max_length": 1}).status_code == 200
    r = post(service, {"text": texts[:-1] + [texts[-1] + "🍕"], **OK, "max_length": 1})
    assert r.status_code == 413 and f"at most {limit}" in r.json()["error"]["message"]
