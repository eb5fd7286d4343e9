"""The abuse corpus: hostile or broken requests, each answered with its documented code, and the
service translating correctly afterwards. Never a 5xx, a traceback or a file path."""

from __future__ import annotations

import json
import socket

import pytest

from service.schemas import LIMITS

OK = {"source_lang": "en", "target_lang": "de"}


def body(**fields) -> bytes:
    return json.dumps({**OK, **fields}).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (name, method, path, raw body, content type, expected status)
CASES = [
    ("invalid utf-8", "POST", "/v1/translate", b'{"text": "\xff\xfe", "source_lang": "en", "target_lang": "de"}',
     "application/json", 422),
    ("lone surrogate", "POST", "/v1/translate", b'{"text": "a \\ud800 b", "source_lang": "en", "target_lang": "de"}',
     "application/json", 422),
    ("NUL byte", "POST", "/v1/translate", body(text="a\u0000b"), "application/json", 422),
    ("C0 control", "POST", "/v1/translate", body(text="bell\u0007"), "application/json", 422),
    ("DEL control", "POST", "/v1/translate", body(text="x\u007fy"), "application/json", 422),
    ("zero-width only", "POST", "/v1/translate", body(text="\u200b\u200c\u200d"), "application/json", 200),
    ("bidi override", "POST", "/v1/translate", body(text="\u202eA dog runs.\u202c"), "application/json", 200),
    ("10k combining marks", "POST", "/v1/translate", body(text="a" + "\u0301" * 10_000), "application/json", 413),
    ("emoji", "POST", "/v1/translate", body(text="I love pizza 🍕🍕 and 👩‍👩‍👧!"), "application/json", 200),
    ("CJK", "POST", "/v1/translate", body(text="我爱北京天安门。東京は大きい。"), "application/json", 200),
    ("tokenizer-breaking", "POST", "/v1/translate", body(text="▁▁ </s> <pad> <unk> >>de<< ⁇ \\u0000"),
     "application/json", 200),
    ("NaN literal", "POST", "/v1/translate", b'{"text": "a", "source_lang": "en", "target_lang": "de", '
     b'"length_penalty": NaN}', "application/json", 422),
    ("Infinity literal", "POST", "/v1/translate", b'{"text": "a", "source_lang": "en", "target_lang": "de", '
     b'"length_penalty": Infinity}', "application/json", 422),
    ("1e400", "POST", "/v1/translate", b'{"text": "a", "source_lang": "en", "target_lang": "de", '
     b'"length_penalty": 1e400}', "application/json", 422),
    ("text is a number", "POST", "/v1/translate", body(text=123), "application/json", 422),
    ("text is null", "POST", "/v1/translate", body(text=None), "application/json", 422),
    ("text list of numbers", "POST", "/v1/translate", body(text=[1, 2]), "application/json", 422),
    ("beam_size is a string", "POST", "/v1/translate", body(text="a", beam_size="four"), "application/json", 422),
    ("beam_size 0", "POST", "/v1/translate", body(text="a", beam_size=0), "application/json", 422),
    ("beam_size 1000", "POST", "/v1/translate", body(text="a", beam_size=1000), "application/json", 422),
    ("negative length_penalty", "POST", "/v1/translate", body(text="a", length_penalty=-1), "application/json", 422),
    ("timeout 0", "POST", "/v1/translate", body(text="a", timeout=0), "application/json", 422),
    ("unknown field", "POST", "/v1/translate", body(text="a", temperature=2), "application/json", 422),
    ("body is an array", "POST", "/v1/translate", b'["a", "b"]', "application/json", 422),
    ("body is empty", "POST", "/v1/translate", b"", "application/json", 422),
    ("truncated JSON", "POST", "/v1/translate", b'{"text": "a", "source', "application/json", 422),
    ("nested JSON", "POST", "/v1/translate", f'{{"text": {nested(20)}, "source_lang": "en"}}'.encode(),
     "application/json", 422),
    ("deep JSON (100k levels)", "POST", "/v1/translate", nested(100_000).encode(), "application/json", 422),
    ("10 MB body", "POST", "/v1/translate", body(text="a" * 10_000_000), "application/json", 413),
    ("100k-item list", "POST", "/v1/translate", body(text=["a"] * 100_000), "application/json", 422),
    ("empty list", "POST", "/v1/translate", body(text=[]), "application/json", 422),
    ("unknown language", "POST", "/v1/translate", json.dumps({"text": "a", "source_lang": "en",
                                                               "target_lang": "xx"}).encode(), "application/json", 404),
    ("malformed language", "POST", "/v1/translate", json.dumps({"text": "a", "source_lang": "english",
                                                                "target_lang": "de"}).encode(),
     "application/json", 422),
    ("same source and target", "POST", "/v1/translate", json.dumps({"text": "a", "source_lang": "de",
                                                                    "target_lang": "de"}).encode(),
     "application/json", 422),
    ("text/plain", "POST", "/v1/translate", b"translate this", "text/plain", 415),
    ("form body on a JSON route", "POST", "/v1/translate", b"text=a&source_lang=en",
     "application/x-www-form-urlencoded", 415),
    ("no content type", "POST", "/v1/translate", body(text="a"), "", 415),
    ("GET on a POST route", "GET", "/v1/translate", b"", "", 405),
    ("unknown route", "POST", "/v2/translate", body(text="a"), "application/json", 404),
    ("libre: XML", "POST", "/translate", b"<q>a</q>", "application/xml", 415),
    ("libre: missing q", "POST", "/translate", b'{"source": "en", "target": "de"}', "application/json", 422),
    ("libre: unknown pair", "POST", "/translate", b'{"q": "a", "source": "en", "target": "zz"}', "application/json",
     404),
]


@pytest.mark.parametrize("name,method,path,raw,ctype,code", CASES, ids=[c[0] for c in CASES])
def test_abuse_case(service, name, method, path, raw, ctype, code):
    headers = {"content-type": ctype} if ctype else {}
    with service.client() as c:
        r = c.request(method, path, content=raw if method == "POST" else None, headers=headers)
        assert r.status_code == code, f"{name}: {r.status_code} {r.text[:300]}"
        text = r.text
        assert "Traceback" not in text and "/work/" not in text and ".py" not in text
        if code >= 400:
            err = r.json()["error"]
            assert (err if isinstance(err, str) else err["message"])
        elif name == "zero-width only":
            assert r.json()["translations"][0]["text"] == "\u200b\u200c\u200d"  # nothing visible: passed through
        ok = c.post("/v1/translate", json={"text": "A dog runs.", **OK})
        assert ok.status_code == 200


def test_content_length_mismatch_is_rejected(service):
    """A body shorter than its Content-Length: the server must answer 400 or drop it, never hang or 5xx."""
    host, port = service.url.removeprefix("http://").split(":")
    payload = body(text="a")
    request = (f"POST /v1/translate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload) + 50}\r\nConnection: close\r\n\r\n").encode() + payload
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)  # the rest never comes
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    status = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/1.1 ") else b""
    assert status in (b"400", b""), reply[:200]
    with service.client() as c:
        assert c.post("/v1/translate", json={"text": "Still fine.", **OK}).status_code == 200


def test_max_items_is_a_real_bound(service):
    with service.client() as c:
        at = c.post("/v1/translate", json={"text": ["a"] * LIMITS.max_items, **OK, "beam_size": 1})
        over = c.post("/v1/translate", json={"text": ["a"] * (LIMITS.max_items + 1), **OK})
    assert at.status_code == 200 and len(at.json()["translations"]) == LIMITS.max_items
    assert over.status_code == 422 and f"at most {LIMITS.max_items} items" in over.json()["error"]["message"]


def test_slow_body_is_dropped(service):
    """A client that sends its headers and then trickles the body (slowloris) is cut off with 408."""
    host, port = service.url.removeprefix("http://").split(":")
    payload = body(text="a" * 100)
    head = (f"POST /v1/translate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=LIMITS.body_timeout_s + 30) as s:
        s.sendall(head + payload[:10])  # ... and nothing more
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
