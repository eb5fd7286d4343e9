"""Marian-style tokenization: sentencepiece pieces looked up in vocab.json, `</s>` appended.

Source and target have their own sentencepiece models (source.spm, target.spm) and, usually,
one shared vocab.json; some checkpoints have a separate target_vocab.json. Pieces the vocab
lacks become `<unk>`. A multilingual model reads the target language as a leading `>>xx<<` token.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

from model.errors import CheckpointError

UNK, EOS, PAD = "<unk>", "</s>", "<pad>"
SPIECE_UNDERLINE = "\u2581"


class MarianTokenizer:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            self.source_spm = spm.SentencePieceProcessor(model_file=str(path / "source.spm"))
            self.target_spm = spm.SentencePieceProcessor(model_file=str(path / "target.spm"))
            self.vocab: dict[str, int] = json.loads((path / "vocab.json").read_text())
            target_file = path / "target_vocab.json"
            self.target_vocab = json.loads(target_file.read_text()) if target_file.exists() else self.vocab
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"tokenizer files in {path} are missing or unreadable: {exc}") from exc
        for token in (UNK, EOS, PAD):
            if token not in self.vocab:
                raise CheckpointError(f"vocab.json in {path} has no {token} token")
        self.unk_id, self.eos_id, self.pad_id = (self.vocab[t] for t in (UNK, EOS, PAD))
        self.target_pieces = {i: p for p, i in self.target_vocab.items()}
        # Pieces that never reach the text: what transformers drops with skip_special_tokens.
        self.skip_ids = {self.target_vocab.get(t) for t in (UNK, EOS, PAD)} - {None}
        self.language_tokens = sorted(t for t in self.vocab if t.startswith(">>") and t.endswith("<<"))

    @property
    def target_languages(self) -> list[str]:
        """Languages a multilingual model can produce (from its >>xx<< tokens); empty if single-pair."""
        return [t[2:-2] for t in self.language_tokens]

    def language_id(self, lang: str) -> int:
        token = f">>{lang}<<"
        if token not in self.vocab:
            raise KeyError(f"target language {lang!r} is not one of {self.target_languages}")
        return self.vocab[token]

    def pieces(self, text: str) -> list[str]:
        return self.source_spm.encode(text, out_type=str)

    def encode_batch(self, texts: list[str], target_lang: str | None = None) -> list[list[int]]:
        """Source texts -> ids, `</s>` appended; with `target_lang`, `>>lang<<` prepended."""
        prefix = [self.language_id(target_lang)] if target_lang and self.language_tokens else []
        out = []
        for pieces in self.source_spm.encode(texts, out_type=str):
            out.append(prefix + [self.vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id])
        return out

    def decode(self, ids: list[int]) -> str:
        pieces = [self.target_pieces.get(i, UNK) for i in ids if i not in self.skip_ids]
        return self.target_spm.decode_pieces(pieces).replace(SPIECE_UNDERLINE, " ").strip()

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]
