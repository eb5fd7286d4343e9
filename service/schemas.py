"""The wire schema: request and response bodies of the HTTP API (pydantic v2).

Requests forbid unknown fields and carry their bounds, so the OpenAPI document at /docs states
every limit. A request becomes an engine job in exactly one place: `TranslateRequest.to_job()`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from service.settings import Limits

LIMITS = Limits()
# C0 controls other than tab/newline/carriage return, DEL, and lone UTF-16 surrogates: not text.
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def check_text(value: str | list[str]) -> str | list[str]:
    """Total length within bounds; no control characters or lone surrogates (422 names the spot)."""
    texts = [value] if isinstance(value, str) else value
    total = sum(len(t) for t in texts)
    if total > LIMITS.max_chars:
        raise ValueError(f"must be at most {LIMITS.max_chars} characters in all. Given: {total}")
    for n, t in enumerate(texts):
        bad = NOT_TEXT.search(t)
        if bad:
            where = f"item {n}, " if isinstance(value, list) else ""
            char = bad.group()
            kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
            raise ValueError(f"contains {kind} U+{ord(char):04X} at {where}index {bad.start()}. "
                             "Send text only (tab, newline and carriage return are allowed)")
    return value
LangCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$", max_length=10)]


class _Strict(BaseModel):
    # strict: 1.0 is not an int and 0 is not a bool; a client gets told, not silently coerced.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=LIMITS.max_chars, strict=True)


@dataclass(frozen=True)
class TranslationJob:
    """What the model deployment needs to know about one request (the engine-facing view)."""

    texts: tuple[str, ...]
    source_lang: str
    target_lang: str
    beam_size: int | None
    max_length: int | None
    num_alternatives: int
    length_penalty: float | None
    timeout_s: float
    return_alignment: bool = False


class TranslateRequest(_Strict):
    text: str | Annotated[list[str], Field(min_length=1, max_length=LIMITS.max_items)] = Field(
        description=f"A text or a list of texts (1 to {LIMITS.max_items}); together at most "
        f"{LIMITS.max_chars} characters. Long texts are split into sentences and put back together.",
        examples=["A dog runs across the beach."],
    )
    source_lang: LangCode = Field(examples=["en"])
    target_lang: LangCode = Field(examples=["de"])
    beam_size: int | None = Field(None, ge=1, le=LIMITS.max_beam_size,
                                  description="beam width; default: the model's (1 = greedy)")
    max_length: int | None = Field(None, ge=1, le=LIMITS.max_output_tokens,
                                   description="most output tokens per sentence")
    num_alternatives: int = Field(0, ge=0, le=LIMITS.max_alternatives,
                                  description="extra translations from the beam, best first")
    return_scores: bool = Field(False, description="include the model's score (mean log-probability per token)")
    length_penalty: float | None = Field(None, ge=0.0, le=5.0,
                                         description="beam score = log p / length ** length_penalty")
    return_alignment: bool = Field(False, description="per sentence: tokens with character offsets and a word "
                                   "alignment from cross-attention (see the Alignment schema for the method)")
    stream: bool = Field(False, description="answer with server-sent events, one per sentence, in document order")
    timeout: float | None = Field(None, ge=1.0, le=LIMITS.max_timeout_s,
                                  description=f"seconds before the request is abandoned with 504 "
                                  f"(default {LIMITS.default_timeout_s})")

    _check_text = field_validator("text")(check_text)

    @model_validator(mode="after")
    def _cross_field(self) -> TranslateRequest:
        if self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang must differ. Given: both {self.source_lang!r}")
        if self.beam_size is not None and self.num_alternatives >= self.beam_size:
            raise ValueError(f"num_alternatives must be < beam_size ({self.beam_size}). "
                             f"Given: {self.num_alternatives}")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)

    def to_job(self) -> TranslationJob:
        return TranslationJob(
            texts=tuple(self.texts), source_lang=self.source_lang, target_lang=self.target_lang,
            beam_size=self.beam_size, max_length=self.max_length, num_alternatives=self.num_alternatives,
            length_penalty=self.length_penalty, timeout_s=self.timeout or LIMITS.default_timeout_s,
            return_alignment=self.return_alignment,
        )


class Token(BaseModel):
    text: str = Field(description="the sentencepiece piece")
    start: int = Field(description="character offset (code points) of its first character")
    end: int = Field(description="character offset after its last character")


class Link(BaseModel):
    source: tuple[int, int] = Field(description="character span of a source word in the input text")
    target: tuple[int, int] = Field(description="character span of a target word in the translation")
    weight: float = Field(description="share of the target word's attention that went to this source word")


class Alignment(BaseModel):
    """One sentence. Word alignment method: average the heads of the second-to-last decoder layer's
    cross-attention; for each target word, sum the attention its pieces paid to each source word
    (while being predicted) and link it to the source word with the most. Offsets are into the
    item's input text and its translation."""

    source: tuple[int, int]
    target: tuple[int, int]
    source_tokens: list[Token]
    target_tokens: list[Token] | None = Field(description="null where pieces cannot be placed exactly")
    links: list[Link]


class Translation(BaseModel):
    text: str
    score: float | None = Field(None, description="mean over the text's sentences (with return_scores)")
    alternatives: list[str] | None = None
    alignment: list[Alignment] | None = Field(None, description="one per sentence (with return_alignment)")


class Usage(BaseModel):
    sentences: int
    input_tokens: int
    output_tokens: int


class Timings(BaseModel):
    total_s: float = Field(description="from arrival at the ingress to the response")
    queue_s: float = Field(description="longest wait of this request's sentences before their batch started")
    compute_s: float = Field(description="encoder + decoder time of the batches that carried this request")


class TranslateResponse(BaseModel):
    translations: list[Translation] = Field(description="one per input text, in input order")
    model: str
    source_lang: str
    target_lang: str
    usage: Usage
    timings: Timings


class AttentionRequest(_Strict):
    """One sentence; the full attention tensors come back (bounded: at most 64 tokens each side)."""

    text: str = Field(min_length=1, max_length=400, examples=["The dog could not cross the street."])
    source_lang: LangCode = Field(examples=["en"])
    target_lang: LangCode = Field(examples=["de"])
    beam_size: int | None = Field(None, ge=1, le=LIMITS.max_beam_size)

    _check_text = field_validator("text")(check_text)

    @model_validator(mode="after")
    def _differ(self) -> AttentionRequest:
        if self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang must differ. Given: both {self.source_lang!r}")
        return self


class AttentionResponse(BaseModel):
    translation: str
    source_tokens: list[str] = Field(description="as the model sees them, language token and </s> included")
    target_tokens: list[str] = Field(description="generated tokens, </s> included")
    encoder: list[list[list[list[float]]]] = Field(description="[layer][head][source i][source j]")
    decoder: list[list[list[list[float]]]] = Field(description="[layer][head][target t][target u]")
    cross: list[list[list[list[float]]]] = Field(description="[layer][head][target t][source j]")
    alignment_layer: int
    alignment: Alignment | None


class ModelInfo(BaseModel):
    name: str
    pairs: list[str]
    path: str
    parameters: int
    device: str
    dtype: str
    max_source_tokens: int
    default_beam_size: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str
    bound: Any | None = None
    given: Any | None = None


class ErrorBody(BaseModel):
    code: int
    type: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- LibreTranslate compatibility ------------------------------------------------------------
class LibreTranslateRequest(BaseModel):
    """LibreTranslate's POST /translate body (JSON or form)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # LibreTranslate clients send extras

    q: str | Annotated[list[str], Field(min_length=1, max_length=LIMITS.max_items)]
    source: str = Field(max_length=10)
    target: str = Field(max_length=10)
    format: Literal["text", "html"] = "text"
    alternatives: int = Field(0, ge=0, le=LIMITS.max_alternatives)
    api_key: str | None = Field(None, max_length=256)

    _check_text = field_validator("q")(check_text)


class LibreError(BaseModel):
    """LibreTranslate's error body."""

    error: str


class LibreLanguage(BaseModel):
    code: str
    name: str
    targets: list[str]
