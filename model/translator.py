"""A loaded model with its tokenizer: text in, text out, in batches.

The service has its own scheduler (service/engine.py); this is the plain-Python entry point
for scripts, the CLI and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import load_model
from model.decoding import Hypothesis, generate
from model.generation import GenerationSettings
from model.tokenizer import MarianTokenizer

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "models" / "embedded-en-de"


@dataclass
class Translation:
    text: str
    score: float
    alternatives: list[str]  # further hypotheses of the n-best list, best first


def pad_batch(ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Right-padded (B, S) tensor from token lists."""
    out = torch.full((len(ids), max(map(len, ids))), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device)


class Translator:
    def __init__(self, path: str | Path = EMBEDDED_MODEL, *, device: str | None = None,
                 dtype: torch.dtype | None = None, trust_pickle: bool = False) -> None:
        self.path = Path(path)
        self.model = load_model(self.path, device=device, dtype=dtype, trust_pickle=trust_pickle)
        self.device = next(self.model.parameters()).device
        self.tokenizer = MarianTokenizer(self.path)
        self.settings = GenerationSettings.from_checkpoint(self.path, self.model.cfg.pad_token_id)
        tok_cfg = self.path / "tokenizer_config.json"
        self.default_target = json.loads(tok_cfg.read_text()).get("target_lang") if tok_cfg.exists() else None

    def resolve_target(self, target_lang: str | None) -> str | None:
        """The >>lang<< token to prepend: None for single-pair models."""
        if not self.tokenizer.language_tokens:
            return None
        lang = target_lang or self.default_target
        if lang is None:
            raise ValueError(f"this model needs a target language, one of {self.tokenizer.target_languages}")
        self.tokenizer.language_id(lang)  # raises KeyError for an unknown language
        return lang

    def translate_batch(self, texts: list[str], *, target_lang: str | None = None, beam_size: int | None = None,
                        num_hypotheses: int | None = None, length_penalty: float | None = None,
                        max_length: int | None = None, max_batch_size: int = 32) -> list[Translation]:
        settings = self.settings.override(beam_size=beam_size, num_hypotheses=num_hypotheses,
                                          length_penalty=length_penalty, max_length=max_length)
        ids = self.tokenizer.encode_batch(texts, target_lang=self.resolve_target(target_lang))
        results: list[Translation | None] = [None] * len(ids)
        for i, text in enumerate(texts):
            if not text.strip():  # nothing to translate: do not ask the model to invent something
                results[i] = Translation("", 0.0, [])
        # Similar lengths together: less padding.
        order = sorted((i for i in range(len(ids)) if results[i] is None), key=lambda i: len(ids[i]))
        for start in range(0, len(order), max_batch_size):
            chunk = order[start : start + max_batch_size]
            hyps = generate(self.model, pad_batch([ids[i] for i in chunk], self.tokenizer.pad_id, self.device),
                            settings)
            for i, nbest in zip(chunk, hyps):
                results[i] = self._result(nbest)
        return [r for r in results if r is not None]

    def _result(self, nbest: list[Hypothesis]) -> Translation:
        texts = [self.tokenizer.decode(h.tokens) for h in nbest]
        return Translation(texts[0], nbest[0].score, texts[1:])


def language_pairs(path: str | Path) -> list[str]:
    """The "src-tgt" pairs a model directory serves, from tokenizer_config.json and its >>xx<< tokens.

    A single-pair model gives [source-target]; a model with target tokens gives source -> each
    target, or every ordered pair of them when the source is itself a target (a two-way model)."""
    path = Path(path)
    tok_cfg = path / "tokenizer_config.json"
    raw = json.loads(tok_cfg.read_text()) if tok_cfg.exists() else {}
    source, target = raw.get("source_lang"), raw.get("target_lang")
    vocab = json.loads((path / "vocab.json").read_text())
    targets = sorted(t[2:-2] for t in vocab if t.startswith(">>") and t.endswith("<<"))
    if targets and source in targets:
        return [f"{a}-{b}" for a in targets for b in targets if a != b]
    if targets and source:
        return [f"{source}-{t}" for t in targets]
    if source and target:
        return [f"{source}-{target}"]
    raise ValueError(f"cannot tell which language pairs {path} serves: give `pairs` explicitly")
