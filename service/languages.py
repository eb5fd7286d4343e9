"""Language names for /languages, and a small detector for LibreTranslate's source="auto"."""

from __future__ import annotations

import re

NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "fi": "Finnish", "fr": "French", "hu": "Hungarian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}

# The most frequent function words: enough to tell apart the languages we serve.
STOPWORDS = {
    "en": set("the a an and of to in is are on with for at by it this that was were be has have he she they".split()),
    "de": set("der die das und ist ein eine zu den von mit auf im dem des nicht sich sie er es wir ich auch".split()),
    "fr": set("le la les et est un une des du de dans pour sur que qui pas il elle nous vous au avec".split()),
    "es": set("el la los las y es un una de del en que por para con no se su al lo como".split()),
}
WORD = re.compile(r"[^\W\d_]+")


def language_name(code: str) -> str:
    return NAMES.get(code, code)


def detect_language(text: str, candidates: list[str]) -> tuple[str, float]:
    """(language, confidence 0-100) among `candidates`, by function-word counts."""
    if not candidates:
        return "en", 0.0
    words = [w.lower() for w in WORD.findall(text)]
    scores = {c: sum(w in STOPWORDS.get(c, ()) for w in words) for c in candidates}
    best = max(candidates, key=lambda c: scores[c])
    total = sum(scores.values())
    return best, round(100.0 * scores[best] / total, 1) if total else 0.0
