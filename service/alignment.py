"""Token spans and word alignment from cross-attention.

Method (documented in the API): average the heads of one decoder layer (by default the
second-to-last, which aligns best in Transformer translation models), take for each target
token the attention it paid to each source token while it was being predicted, pool pieces into
words (whitespace-separated), and link each target word to the source word it attended to most.
Character offsets are into the text as sent and as returned (Python str indices: code points,
so an emoji is one character).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from model.tokenizer import SPIECE_UNDERLINE, MarianTokenizer

BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
WORD = re.compile(r"\S+")


@dataclass
class Span:
    text: str
    start: int  # character offsets, end exclusive
    end: int


def _char_index(text: str) -> list[int]:
    """Byte offset -> character offset, for every byte offset of text's UTF-8 (and its end)."""
    index = []
    for i, ch in enumerate(text):
        index += [i] * len(ch.encode("utf-8"))
    index.append(len(text))
    return index


def source_spans(tok: MarianTokenizer, text: str) -> list[Span]:
    """The source pieces of `text` (as the model sees them, without >>xx<< and </s>) with offsets."""
    proto = tok.source_spm.encode(text, return_type="proto")
    index = _char_index(text)
    return [Span(p.piece, index[p.begin], index[p.end]) for p in proto.pieces]


def target_spans(tok: MarianTokenizer, ids: list[int], decoded: str) -> list[Span] | None:
    """Offsets of the generated pieces in `decoded` (the text returned), or None where they cannot be
    placed exactly (unknown or special pieces that decoding drops)."""
    out = bytearray()
    bounds: list[tuple[int, int]] = []
    for i in ids:
        piece = tok.target_pieces.get(i, "")
        if i in tok.skip_ids or not piece:
            bounds.append((len(out), len(out)))
            continue
        m = BYTE_PIECE.match(piece)
        start = len(out)
        out += bytes([int(m.group(1), 16)]) if m else piece.replace(SPIECE_UNDERLINE, " ").encode("utf-8")
        bounds.append((start, len(out)))
    try:
        full = out.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lead = len(full) - len(full.lstrip())
    if full.strip() != decoded:
        return None
    index = _char_index(full)
    spans = []
    for i, (b, e) in zip(ids, bounds):
        s, t = index[b], index[e]
        s, t = max(s - lead, 0), max(t - lead, 0)
        s, t = min(s, len(decoded)), min(t, len(decoded))
        while s < t and decoded[s] == " ":  # a piece's leading space belongs between words
            s += 1
        spans.append(Span(tok.target_pieces.get(i, ""), s, t))
    return spans


def words(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in WORD.finditer(text)]


def _word_of(spans: list[Span], word_bounds: list[tuple[int, int]]) -> list[int | None]:
    out: list[int | None] = []
    for sp in spans:
        found = None
        for w, (a, b) in enumerate(word_bounds):
            if (sp.start < b and sp.end > a) or (sp.start == sp.end and a <= sp.start < b):
                found = w
                break
        out.append(found)
    return out


def align(cross: Tensor, src: list[Span], src_offset: int, tgt: list[Span], source_text: str,
          target_text: str) -> list[dict]:
    """Links target word -> source word. `cross` is (T, S) for the generated tokens (EOS row
    last) over the model's source tokens; `src_offset` is the index of the first text piece
    (1 with a >>xx<< token); the columns after the text pieces (</s>) are ignored."""
    s_words, t_words = words(source_text), words(target_text)
    s_of, t_of = _word_of(src, s_words), _word_of(tgt, t_words)
    weights = cross[: len(tgt), src_offset : src_offset + len(src)]  # (T', S')
    links = []
    for w, (a, b) in enumerate(t_words):
        rows = [i for i, x in enumerate(t_of) if x == w]
        if not rows:
            continue
        row = weights[rows].mean(0)
        scores = torch.zeros(len(s_words))
        for j, x in enumerate(s_of):
            if x is not None:
                scores[x] += row[j]
        total = float(scores.sum())
        if total <= 0:
            continue
        best = int(scores.argmax())
        links.append({"target": [a, b], "source": list(s_words[best]), "weight": round(float(scores[best]) / total, 4)})
    return links
