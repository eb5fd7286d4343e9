"""Generation settings: what a decode may do, with defaults taken from the checkpoint.

Lengths here count generated tokens (EOS included). Hugging Face's `max_length`/`min_length`
also count the decoder start token, so `from_hf` subtracts one: an OPUS-MT checkpoint then
decodes here exactly as `generate()` decodes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    beam_size: int = 1
    length_penalty: float = 1.0  # score = sum(log p) / length ** length_penalty
    max_length: int = 256  # generated tokens, EOS included
    # Per-row cap relative to the source: a * source_tokens + b (None: no relative cap).
    max_length_a: float | None = None
    max_length_b: int = 0
    min_length: int = 0  # EOS is banned until this many tokens are out
    num_hypotheses: int = 1  # n-best returned per source (<= beam_size)
    early_stopping: bool = False  # stop a sentence once beam_size hypotheses ended (HF semantics)
    banned_ids: tuple[int, ...] = field(default_factory=tuple)  # e.g. the pad token
    forced_eos: bool = True  # the last allowed token is EOS, as forced_eos_token_id does
    renormalize: bool = False  # log-softmax again after bans, as renormalize_logits does

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1. Given: {self.beam_size}")
        if not 1 <= self.num_hypotheses <= self.beam_size:
            raise ValueError(
                f"num_hypotheses must be between 1 and beam_size ({self.beam_size}). Given: {self.num_hypotheses}"
            )
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1. Given: {self.max_length}")

    def row_limit(self, source_len: int) -> int:
        """The most tokens one row may generate, EOS included."""
        if self.max_length_a is None:
            return self.max_length
        return max(1, min(self.max_length, int(self.max_length_a * source_len) + self.max_length_b))

    def override(self, **changes: Any) -> GenerationSettings:
        """A copy with the given fields replaced; None values are ignored (no change)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_hf(cls, raw: dict[str, Any], pad_token_id: int | None = None) -> GenerationSettings:
        """From a generation_config.json (or config.json) dict, as `transformers` reads it."""
        banned: list[int] = []
        for seq in raw.get("bad_words_ids") or []:
            if len(seq) == 1:  # multi-token bans are not supported; single-token ones are what Marian uses
                banned.append(int(seq[0]))
        if pad_token_id is not None and pad_token_id not in banned and raw.get("bad_words_ids") is None:
            banned.append(pad_token_id)  # Marian never emits pad; ban it even if the config forgot to
        early = raw.get("early_stopping", False)
        return cls(
            beam_size=int(raw.get("num_beams") or 1),
            length_penalty=float(raw.get("length_penalty", 1.0)),
            max_length=max(1, int(raw.get("max_length") or 257) - 1),
            min_length=max(0, int(raw.get("min_length") or 0) - 1),
            early_stopping=early is True,
            banned_ids=tuple(banned),
            forced_eos=raw.get("forced_eos_token_id") is not None,
            renormalize=bool(raw.get("renormalize_logits", False)),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path, pad_token_id: int | None = None) -> GenerationSettings:
        """generation_config.json if present, else the generation fields of config.json."""
        path = Path(path)
        for name in ("generation_config.json", "config.json"):
            file = path / name
            if file.exists():
                return cls.from_hf(json.loads(file.read_text()), pad_token_id)
        return cls()

    def to_hf(self, eos_token_id: int, pad_token_id: int, decoder_start_token_id: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bad_words_ids": [[i] for i in self.banned_ids],
            "decoder_start_token_id": decoder_start_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "max_length": self.max_length + 1,
            "num_beams": self.beam_size,
            "length_penalty": self.length_penalty,
            "renormalize_logits": self.renormalize,
        }
        if self.forced_eos:
            out["forced_eos_token_id"] = eos_token_id
        if self.min_length:
            out["min_length"] = self.min_length + 1
        return out
