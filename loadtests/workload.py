"""Held-out sentences for benchmarks and load tests (Multi30k test sets when present)."""

from __future__ import annotations

import random
from pathlib import Path

from model.data import multi30k

DEFAULT_MULTI30K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "multi30k"
FALLBACK = [
    "A man in a blue shirt is standing on a ladder.", "Two young children are playing in the sand.",
    "A woman is riding a bicycle down the street.", "The dog jumps over the fence.",
    "A group of people are sitting at a table outside.", "A little girl climbs into a wooden playhouse.",
    "Several men in hard hats are operating a giant pulley system.", "A man sleeps on a bench in the park.",
]


def held_out_pairs(folder: Path | None = None, split: str = "test_2016_flickr") -> list[tuple[str, str]]:
    """(english, german) pairs never trained on; a small built-in list when Multi30k is absent."""
    folder = folder or DEFAULT_MULTI30K
    try:
        return multi30k.read_split(folder, split)
    except FileNotFoundError:
        return [(s, s) for s in FALLBACK]


def sample_sentences(n: int, lang: str = "en", seed: int = 0, folder: Path | None = None) -> list[str]:
    pairs = held_out_pairs(folder)
    rng = random.Random(seed)
    side = 0 if lang == "en" else 1
    return [rng.choice(pairs)[side] for _ in range(n)]


def hf_tokens(sequences: list[list[int]], eos: int, pad: int) -> list[list[int]]:
    """transformers' generate() rows -> generated ids without the start token, EOS and padding."""
    rows = []
    for row in sequences:
        ids = row[1:]
        if eos in ids:
            ids = ids[: ids.index(eos)]
        rows.append([i for i in ids if i != pad])
    return rows
