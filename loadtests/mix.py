"""The request mix of the load tests, drawn from held-out data; plain Python (no Locust), so tests can use it.

Each request type has a name (the Locust stats name), a weight and a builder. A builder returns a
`Call`: what to send and what a correct answer is (status code, and the number of translations).
Texts come from the Multi30k test sets (`MULTI30K` or ../shared/data/multi30k), both sides, so
traffic goes both ways (en->de, de->en); without them, from a small built-in list.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.workload import DEFAULT_MULTI30K, held_out_pairs

TEST_SPLITS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
PAIRS = (("en", "de"), ("de", "en"))
BEAM_SHARE = 0.25  # share of phrase/sentence/list/document requests decoded with beam search (else greedy)


@dataclass(frozen=True)
class Call:
    """One HTTP request of the mix and the answer it must get."""

    name: str  # request type: the name Locust groups stats by
    method: str
    path: str
    json: Any = None
    data: bytes | None = None  # a raw body (with `headers`) instead of JSON
    headers: dict[str, str] = field(default_factory=dict)
    expect: int = 200
    items: int | None = None  # translations expected in the answer (None: a single string)

    def check(self, status: int, body: str) -> str | None:
        """None when the answer is right, else what is wrong: the failure message Locust records, kept
        free of request text so that failures group into a few rows."""
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if status != self.expect:
            kind = payload.get("error") if isinstance(payload, dict) else None
            kind = kind.get("type") if isinstance(kind, dict) else None
            return f"expected {self.expect}, got {status}" + (f" ({kind})" if kind else "")
        if payload is None:
            return f"{status} with a body that is not JSON"
        if self.expect != 200:
            return None if isinstance(payload, dict) and "error" in payload else f"{status} without an `error` body"
        if self.path == "/languages":
            return None if isinstance(payload, list) and payload else "no languages"
        if self.path == "/translate":  # LibreTranslate's shape
            text = payload.get("translatedText") if isinstance(payload, dict) else None
            ok = isinstance(text, str) if self.items is None else isinstance(text, list) and len(text) == self.items
            return None if ok else "translatedText missing or of the wrong shape"
        translations = payload.get("translations") if isinstance(payload, dict) else None
        want = 1 if self.items is None else self.items
        if not isinstance(translations, list) or len(translations) != want:
            return f"expected {want} translations"
        if not all(isinstance(t, dict) and isinstance(t.get("text"), str) for t in translations):
            return "a translation without text"
        return None


class Corpus:
    """Held-out sentences of both languages: whole sentences, short phrases, paragraphs."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or Path(os.environ.get("MULTI30K", DEFAULT_MULTI30K))
        pairs: list[tuple[str, str]] = []
        for split in TEST_SPLITS:
            pairs += [p for p in held_out_pairs(folder, split) if p[0] and p[1]]
        self.from_multi30k = len(set(pairs)) > 8 and any(en != de for en, de in pairs)
        self.sentences = {"en": [p[0] for p in pairs], "de": [p[1] for p in pairs]}

    def sentence(self, rng: random.Random, lang: str) -> str:
        return rng.choice(self.sentences[lang])

    def phrase(self, rng: random.Random, lang: str) -> str:
        """The first 1 to 4 words of a sentence: what a UI label or a search query looks like."""
        words = self.sentence(rng, lang).rstrip(".!?").split()
        return " ".join(words[: rng.randint(1, 4)])

    def paragraph(self, rng: random.Random, lang: str) -> str:
        """3 to 6 sentences; Multi30k captions often lack a full stop, which a running text has."""
        sentences = (self.sentence(rng, lang) for _ in range(rng.randint(3, 6)))
        return " ".join(s if s.endswith((".", "!", "?")) else s + "." for s in sentences)


def _direction(rng: random.Random) -> tuple[str, str]:
    return rng.choice(PAIRS)


def _decoding(rng: random.Random) -> dict[str, Any]:
    """Greedy most of the time; beam 4 (with scores and sometimes alternatives) the rest."""
    if rng.random() >= BEAM_SHARE:
        return {"beam_size": 1}
    options: dict[str, Any] = {"beam_size": 4, "return_scores": True}
    if rng.random() < 0.5:
        options["num_alternatives"] = 2
    return options


def phrase(corpus: Corpus, rng: random.Random) -> Call:
    src, tgt = _direction(rng)
    body = {"text": corpus.phrase(rng, src), "source_lang": src, "target_lang": tgt, **_decoding(rng)}
    return Call("phrase", "POST", "/v1/translate", json=body)


def sentence(corpus: Corpus, rng: random.Random) -> Call:
    src, tgt = _direction(rng)
    body = {"text": corpus.sentence(rng, src), "source_lang": src, "target_lang": tgt, **_decoding(rng)}
    return Call("sentence", "POST", "/v1/translate", json=body)


def sentence_list(corpus: Corpus, rng: random.Random) -> Call:
    """A batch from a client: 2 to 16 sentences (a subtitle block, a product list)."""
    src, tgt = _direction(rng)
    texts = [corpus.sentence(rng, src) for _ in range(rng.randint(2, 16))]
    body = {"text": texts, "source_lang": src, "target_lang": tgt, **_decoding(rng)}
    return Call("list", "POST", "/v1/translate", json=body, items=len(texts))


def document(corpus: Corpus, rng: random.Random) -> Call:
    """2 to 4 paragraphs of 3 to 6 sentences: split into sentences by the service, rejoined exactly."""
    src, tgt = _direction(rng)
    text = "\n\n".join(corpus.paragraph(rng, src) for _ in range(rng.randint(2, 4)))
    body = {"text": text, "source_lang": src, "target_lang": tgt, **_decoding(rng)}
    return Call("document", "POST", "/v1/translate", json=body)


def libre(corpus: Corpus, rng: random.Random) -> Call:
    """LibreTranslate's /translate: one sentence or a short list, sometimes with alternatives."""
    src, tgt = _direction(rng)
    body: dict[str, Any] = {"source": src, "target": tgt, "format": "text"}
    if rng.random() < 0.7:
        body["q"], items = corpus.sentence(rng, src), None
    else:
        body["q"] = [corpus.sentence(rng, src) for _ in range(rng.randint(2, 4))]
        items = len(body["q"])
    if rng.random() < 0.2:
        body["alternatives"] = 2
    return Call("libre", "POST", "/translate", json=body, items=items)


def languages(corpus: Corpus, rng: random.Random) -> Call:
    return Call("languages", "GET", "/languages")


def _native(text: Any = "A dog runs.", **fields: Any) -> dict[str, Any]:
    return {"text": text, "source_lang": "en", "target_lang": "de", **fields}


# What clients get wrong, and the status the service must answer (the API's documented errors).
INVALID: list[Callable[[Corpus, random.Random], Call]] = [
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native(c.sentence(r, "en"), beam_size=40), expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json={**_native(c.sentence(r, "en")), "target_lang": "xx"},
                      expect=404),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native([]), expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json={"text": c.sentence(r, "en"), "source_lang": "en"},
                      expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native(c.sentence(r, "en"), colour="red"),
                      expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json={**_native(c.sentence(r, "en")), "target_lang": "en"},
                      expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native(c.sentence(r, "en"), beam_size=2,
                                                                       num_alternatives=2), expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native(c.sentence(r, "en"), beam_size="4"),
                      expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native("Ein Hund\x00 läuft."), expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", json=_native("x" * 20_001), expect=422),
    lambda c, r: Call("invalid", "POST", "/v1/translate", data=b'{"text": "A dog", "source_lang": ',
                      headers={"Content-Type": "application/json"}, expect=422),
    lambda c, r: Call("invalid", "POST", "/translate", json={"q": c.sentence(r, "en"), "source": "en", "target": "xx"},
                      expect=404),
    lambda c, r: Call("invalid", "POST", "/translate", json={"source": "en", "target": "de"}, expect=422),
]


def invalid(corpus: Corpus, rng: random.Random) -> Call:
    return rng.choice(INVALID)(corpus, rng)


# name -> (weight, builder). Weights: mostly short interactive requests, some batches and documents.
MIX: dict[str, tuple[int, Callable[[Corpus, random.Random], Call]]] = {
    "phrase": (25, phrase),
    "sentence": (35, sentence),
    "list": (10, sentence_list),
    "document": (5, document),
    "libre": (15, libre),
    "invalid": (8, invalid),
    "languages": (2, languages),
}
