"""Our tokenizer against transformers' MarianTokenizer, on a sentencepiece model trained here."""

from __future__ import annotations

import pytest

from model.data.vocab import write_tokenizer
from model.tokenizer import MarianTokenizer
from tests.helpers import sentences

TEXTS = sentences(200, seed=42) + [
    "", "  leading and trailing  ", "Unseen wörds: Xylophon, Œuvre, naïve café.", "emoji 🙂 and 中文",
    "multiple   spaces\tand tabs", "ALL CAPS SHOUTING", "1234 5678 90", "a" * 300,
]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm")
    write_tokenizer(sentences(600), path, 400)
    return path


def test_ids_match_transformers(spm_dir):
    from transformers import MarianTokenizer as Reference

    ref = Reference(str(spm_dir / "source.spm"), str(spm_dir / "target.spm"), str(spm_dir / "vocab.json"))
    ours = MarianTokenizer(spm_dir)
    expected = [ref(t)["input_ids"] for t in TEXTS]
    assert ours.encode_batch(TEXTS) == expected
    assert all(ids[-1] == ours.eos_id for ids in expected)


def test_decode_matches_transformers_and_round_trips(spm_dir):
    from transformers import MarianTokenizer as Reference

    ref = Reference(str(spm_dir / "source.spm"), str(spm_dir / "target.spm"), str(spm_dir / "vocab.json"))
    ours = MarianTokenizer(spm_dir)
    ids = ours.encode_batch(TEXTS)
    assert ours.decode_batch(ids) == ref.batch_decode(ids, skip_special_tokens=True)
    for text, row in zip(TEXTS, ids):
        if text.isascii():  # sentencepiece normalises some Unicode (NFKC); plain text round-trips exactly
            assert ours.decode(row) == " ".join(text.split())


def test_language_token_is_prepended(spm_dir):
    ours = MarianTokenizer(spm_dir)
    assert ours.target_languages == ["de", "en"]
    de = ours.encode_batch(["a dog"], target_lang="de")[0]
    assert de[0] == ours.vocab[">>de<<"] and de[1:] == ours.encode_batch(["a dog"])[0]
    with pytest.raises(KeyError, match="fr"):
        ours.encode_batch(["a dog"], target_lang="fr")


def test_unknown_pieces_become_unk(spm_dir):
    ours = MarianTokenizer(spm_dir)
    # A piece outside vocab.json must map to <unk>, never to its raw sentencepiece id.
    del ours.vocab["\u2581a"]
    assert ours.unk_id in ours.encode_batch(["a"])[0]
