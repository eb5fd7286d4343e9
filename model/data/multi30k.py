"""Multi30k (task 1) reader: line-aligned, gzip-compressed raw English/German files."""

from __future__ import annotations

import gzip
from pathlib import Path

SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


def read_split(folder: str | Path, split: str) -> list[tuple[str, str]]:
    """(english, german) pairs of one split; the files are used as they are, unfiltered."""
    folder = Path(folder)
    sides = []
    for lang in ("en", "de"):
        file = folder / f"{split}.{lang}.gz"
        if not file.exists():
            file = folder / f"{split}.{lang}"  # an unpacked clone of multi30k/dataset
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as f:
            sides.append([line.rstrip("\n").strip() for line in f])
    en, de = sides
    if len(en) != len(de):
        raise ValueError(f"{split}: {len(en)} English lines but {len(de)} German lines")
    return list(zip(en, de))
