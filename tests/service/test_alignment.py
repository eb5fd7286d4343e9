"""Token offsets point at the right characters (multi-byte text, emoji); alignment over HTTP."""

from __future__ import annotations

import httpx

from model.tokenizer import SPIECE_UNDERLINE
from service.alignment import source_spans, target_spans

TEXTS = ["Héllo 🍕  wörld, naïve café!", "Ein Mädchen 👩‍👩‍👧 läuft.", "plain ascii text", "中文 and ümlauts"]


def _surface(piece: str) -> str:
    return piece.replace(SPIECE_UNDERLINE, " ").strip()


def test_source_offsets_point_at_the_piece(reference):
    tok = reference.tokenizer
    for text in TEXTS:
        spans = source_spans(tok, text)
        assert [s.text for s in spans] == tok.pieces(text)
        for sp in spans:
            covered = text[sp.start : sp.end]
            if sp.text.startswith("<0x"):  # byte pieces: the last one of a character covers it
                assert covered == "" or len(covered) == 1
            else:
                assert covered.strip() == _surface(sp.text), (text, sp)


def test_target_offsets_point_at_the_piece(reference):
    tok = reference.tokenizer
    for text in TEXTS:
        ids = tok.encode_batch([text])[0][:-1]  # a "translation" that is the text itself, byte pieces and all
        decoded = tok.decode(ids)
        spans = target_spans(tok, ids, decoded)
        assert spans is not None
        assert "".join(decoded[s.start : s.end] for s in spans if s.end > s.start).replace(" ", "") == \
            decoded.replace(" ", "")
        for sp in spans:
            if not sp.text.startswith("<0x"):
                assert decoded[sp.start : sp.end] == _surface(sp.text)


def test_alignment_over_http(service):
    text = "Ein Hund 🐕 läuft. Zwei Katzen schlafen!"
    with httpx.Client(base_url=service.url, timeout=60) as c:
        body = c.post("/v1/translate", json={"text": text, "source_lang": "de", "target_lang": "en",
                                             "return_alignment": True}).json()
        plain = c.post("/v1/translate", json={"text": text, "source_lang": "de", "target_lang": "en"}).json()
    t = body["translations"][0]
    assert t["text"] == plain["translations"][0]["text"] and plain["translations"][0]["alignment"] is None
    sentences = t["alignment"]
    assert len(sentences) == 2
    assert text[slice(*sentences[0]["source"])] == "Ein Hund 🐕 läuft."
    assert text[slice(*sentences[1]["source"])] == "Zwei Katzen schlafen!"
    for s in sentences:
        for tokn in s["source_tokens"]:
            if not tokn["text"].startswith("<0x"):
                assert text[tokn["start"] : tokn["end"]].strip() == _surface(tokn["text"])
        for link in s["links"]:
            src_word = text[slice(*link["source"])]
            tgt_word = t["text"][slice(*link["target"])]
            assert src_word and " " not in src_word and tgt_word and " " not in tgt_word
            assert 0 < link["weight"] <= 1


def test_attention_endpoint_shapes(service):
    with httpx.Client(base_url=service.url, timeout=60) as c:
        r = c.post("/v1/attention", json={"text": "A dog runs.", "source_lang": "en", "target_lang": "de"})
        too_long = c.post("/v1/attention", json={"text": " ".join(["word"] * 79), "source_lang": "en",
                                                  "target_lang": "de"})
    assert r.status_code == 200, r.text
    a = r.json()
    s, t = len(a["source_tokens"]), len(a["target_tokens"])
    assert a["source_tokens"][0] == ">>de<<" and a["source_tokens"][-1] == "</s>" and a["target_tokens"][-1] == "</s>"
    for layer in a["cross"]:
        for head in layer:
            assert len(head) == t and all(len(row) == s and abs(sum(row) - 1) < 1e-3 for row in head)
    assert all(len(h) == s for layer in a["encoder"] for h in layer)
    # within the 400-character schema bound but over the 64-token attention bound
    assert too_long.status_code == 413, too_long.text
