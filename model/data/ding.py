"""The Ding German-English dictionary (Debian's trans-de-en) as clean aligned phrase pairs.

Line format: `German :: English`; sub-entries separated by ` | ` align one to one between the
sides; alternatives within a sub-entry are separated by `; `. Annotations ({m}, [med.],
/abbr/, <hint>, (explanation)) are stripped, the first alternative of each side is kept,
placeholder phrases (sb./etw.) are dropped, and so are duplicates and bad length ratios.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

DEFAULT_PATH = Path("/usr/share/trans/de-en")
ANNOTATION = re.compile(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>|\([^)]*\)|(?<!\S)/[^/\s]+/(?!\S)")
PLACEHOLDER = re.compile(r"\b(sb|sth|jdm|jdn|jds|etw|jd)\.|…|\.\.\.|~|/")  # "/": unresolved alternatives
SPACES = re.compile(r"\s+")
SENTENCE_END = (".", "?", "!")


def clean(text: str) -> str:
    return SPACES.sub(" ", ANNOTATION.sub(" ", text)).strip(" ,;")


def first_alternative(text: str) -> str:
    return clean(text.split("; ")[0])


def parse_line(line: str) -> list[tuple[str, str]]:
    """One dictionary line -> (german, english) pairs, one per aligned sub-entry."""
    if line.startswith("#") or " :: " not in line:
        return []
    de_side, en_side = line.rstrip("\n").split(" :: ", 1)
    de_subs, en_subs = de_side.split(" | "), en_side.split(" | ")
    if len(de_subs) != len(en_subs):
        return []
    pairs = []
    for de, en in zip(de_subs, en_subs):
        de, en = first_alternative(de), first_alternative(en)
        if de and en and not PLACEHOLDER.search(de) and not PLACEHOLDER.search(en):
            pairs.append((de, en))
    return pairs


def good_ratio(de: str, en: str) -> bool:
    a, b = len(de), len(en)
    if min(a, b) < 12:
        return max(a, b) <= 4 * min(a, b) + 8
    return max(a, b) <= 2.2 * min(a, b)


def is_sentence(de: str, en: str) -> bool:
    return (len(en.split()) >= 5 and en.endswith(SENTENCE_END) and de.endswith(SENTENCE_END)
            and en[0].isupper() and de[0].isupper())


def read_pairs(path: str | Path = DEFAULT_PATH, verbose: bool = False) -> list[tuple[str, str]]:
    """All clean (english, german) pairs, deduplicated, in file order."""
    counts: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            raw = parse_line(line)
            counts["sub-entries"] += len(raw)
            for de, en in raw:
                if not good_ratio(de, en):
                    counts["dropped: length ratio"] += 1
                    continue
                if (en, de) in seen:
                    counts["dropped: duplicate"] += 1
                    continue
                seen.add((en, de))
                out.append((en, de))
    counts["kept"] = len(out)
    counts["sentence-like"] = sum(is_sentence(de, en) for en, de in out)
    if verbose:
        for key, value in counts.items():
            print(f"ding {key}: {value}")
    return out


def split_test(pairs: list[tuple[str, str]], size: int = 1000, seed: int = 1234
               ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test): a fixed, seeded test set of sentence-like pairs; training pairs sharing
    either side with a test pair are removed so the test set is never trained on."""
    sentences = [p for p in pairs if is_sentence(p[1], p[0])]
    test = random.Random(seed).sample(sentences, size)
    test_en, test_de = {en for en, _ in test}, {de for _, de in test}
    train = [p for p in pairs if p[0] not in test_en and p[1] not in test_de]
    return train, test
