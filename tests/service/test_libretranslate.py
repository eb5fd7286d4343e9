"""LibreTranslate clients work unchanged: the same requests, the same response shapes."""

from __future__ import annotations

from urllib.parse import urlencode
from urllib.request import Request, urlopen


def test_json_request_like_libretranslate_clients(service):
    with service.client() as c:
        single = c.post("/translate", json={"q": "A dog.", "source": "en", "target": "de", "format": "text"})
        many = c.post("/translate", json={"q": ["A dog.", "A cat."], "source": "en", "target": "de",
                                          "alternatives": 2, "api_key": ""})
        native = c.post("/v1/translate", json={"text": "A dog.", "source_lang": "en", "target_lang": "de"})
    assert single.status_code == 200 and set(single.json()) == {"translatedText"}
    assert single.json()["translatedText"] == native.json()["translations"][0]["text"]
    body = many.json()
    assert isinstance(body["translatedText"], list) and len(body["translatedText"]) == 2
    assert len(body["alternatives"]) == 2 and all(len(a) == 2 for a in body["alternatives"])


def test_form_request(service):
    data = urlencode({"q": "Ein Hund läuft.", "source": "auto", "target": "en"}).encode()
    with urlopen(Request(service.url + "/translate", data=data), timeout=60) as resp:
        import json

        body = json.loads(resp.read())
    assert isinstance(body["translatedText"], str)
    assert body["detectedLanguage"]["language"] == "de"


def test_languages_and_errors(service):
    with service.client() as c:
        langs = c.get("/languages").json()
        assert {"code": "en", "name": "English", "targets": ["de"]} in langs
        bad = c.post("/translate", json={"q": "x", "source": "en", "target": "xx"})
        assert bad.status_code == 404 and "error" in bad.json() and "en-xx" in bad.json()["error"]
        missing = c.post("/translate", json={"source": "en", "target": "de"})
        assert missing.status_code == 422 and "`q` is required" in missing.json()["error"]
