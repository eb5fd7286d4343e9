"""A joint English-German sentencepiece model and the Marian vocab.json built on it.

Marian's layout: `</s>` is 0, `<unk>` 1, then the language tokens (`>>de<<`, `>>en<<`) that
select the target of a two-way model, then the sentencepiece pieces, and `<pad>` last (it is
also the decoder start token). source.spm and target.spm are the same joint model.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import sentencepiece as spm

LANGUAGE_TOKENS = (">>de<<", ">>en<<")


def train_sentencepiece(texts: list[str], out_dir: Path, vocab_size: int, seed_sentences: int = 400_000) -> Path:
    """Unigram model with byte fallback, so any character (emoji, CJK) still maps to pieces."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9999,
        byte_fallback=True,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=True,
        unk_id=0, bos_id=-1, eos_id=1, pad_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    path = out_dir / "source.spm"
    path.write_bytes(model.getvalue())
    shutil.copy(path, out_dir / "target.spm")
    return path


def build_vocab(spm_path: Path) -> dict[str, int]:
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = {"</s>": 0, "<unk>": 1}
    for token in LANGUAGE_TOKENS:
        vocab[token] = len(vocab)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            continue
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def write_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> dict[str, int]:
    spm_path = train_sentencepiece(texts, out_dir, vocab_size)
    vocab = build_vocab(spm_path)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"source_lang": "en", "target_lang": "de", "model_max_length": 512, "separate_vocabs": False}) + "\n")
    return vocab
