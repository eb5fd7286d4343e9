"""Split a document into sentences and put the translations back exactly where they were.

A document becomes a list of segments: the text to translate and the whitespace around it.
Joining every segment's `before + text + after` gives the input back character for character,
so paragraphs, newlines and spacing survive translation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Abbreviations that end in a period without ending a sentence (English and German).
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr vs etc e.g i.e approx no nr vol fig ca bzw z.b d.h u.a usw ggf evtl inkl
    hr fr str abs art s.o s.u vgl bspw jan feb mar apr jun jul aug sep sept oct okt nov dec dez""".split()
)
# End of sentence: . ! ? … (with closing quotes/brackets) followed by whitespace.
BOUNDARY = re.compile(r"""(?<=[.!?…])["'”’»)\]]*\s+""")
LINE_BREAK = re.compile(r"(\s*\n\s*)")


@dataclass(frozen=True)
class Segment:
    before: str  # whitespace before the sentence
    text: str  # the sentence, stripped ('' for a whitespace-only document)
    after: str  # whitespace after it


def _ends_with_abbreviation(chunk: str) -> bool:
    word = chunk.rstrip("\"'”’»)]").rsplit(None, 1)[-1].lower().rstrip(".")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())  # initials: "J. Smith"


def _split_line(line: str) -> list[str]:
    """Sentences of one line, each keeping its trailing whitespace."""
    parts, start = [], 0
    for match in BOUNDARY.finditer(line):
        end = match.end()
        following = line[end : end + 1]
        if not following or not (following.isupper() or following.isdigit() or following in "\"'„“«(¿¡"):
            continue  # "e.g. the": lower case after the period, not a new sentence
        if _ends_with_abbreviation(line[start : match.start()]):
            continue
        parts.append(line[start:end])
        start = end
    parts.append(line[start:])
    return [p for p in parts if p]


def split(document: str) -> list[Segment]:
    """Segments whose concatenation (before + text + after) is exactly `document`."""
    pieces: list[str] = []
    for chunk in LINE_BREAK.split(document):
        if not chunk:
            continue
        if chunk.isspace():
            pieces.append(chunk)
        else:
            pieces.extend(_split_line(chunk))
    segments: list[Segment] = []
    pending = ""  # whitespace not yet attached to a sentence
    for piece in pieces:
        if piece.isspace():
            pending += piece
            continue
        stripped = piece.strip()
        lead = piece[: len(piece) - len(piece.lstrip())]
        trail = piece[len(piece.rstrip()) :]
        segments.append(Segment(pending + lead, stripped, trail))
        pending = ""
    if not segments:
        return [Segment(document, "", "")]
    if pending:
        last = segments[-1]
        segments[-1] = Segment(last.before, last.text, last.after + pending)
    return segments


def join(segments: list[Segment], translations: list[str]) -> str:
    """The document with each segment's text replaced by its translation."""
    return "".join(s.before + t + s.after for s, t in zip(segments, translations, strict=True))


def split_long(segment: Segment, too_long, max_chars_fallback: int = 200) -> list[Segment]:
    """Break a sentence that `too_long(text)` rejects into shorter segments at safe points.

    Prefers whitespace after punctuation (, ; : - –), then any whitespace; a single unbroken run
    of characters is cut every `max_chars_fallback` characters. Spacing is kept exactly.
    """
    if not segment.text or not too_long(segment.text):
        return [segment]
    text = segment.text
    candidates = [m.end() for m in re.finditer(r"[,;:\-–—)]\s+", text)] or [m.end() for m in re.finditer(r"\s+", text)]
    mid = len(text) // 2
    if candidates:
        cut = min(candidates, key=lambda c: abs(c - mid))
    else:
        cut = min(max_chars_fallback, mid) or 1
    head, tail = text[:cut], text[cut:]
    head_core = head.rstrip()
    left = Segment(segment.before, head_core, head[len(head_core):])
    right = Segment("", tail, segment.after)
    return split_long(left, too_long, max_chars_fallback) + split_long(right, too_long, max_chars_fallback)


# Zero-width characters and bidi controls: invisible, and they only confuse the tokenizer.
INVISIBLE = re.compile("[\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(text: str) -> str:
    """The text the model should see: invisible formatting characters removed."""
    return INVISIBLE.sub("", text).strip()
