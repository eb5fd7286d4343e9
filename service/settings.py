"""Service settings: every limit with an explicit default, read once at start-up.

Environment variables with the prefix `MT_` override the defaults (MT_MAX_CHARS=50000 ...);
a bad value stops the service at start-up, never a request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseSettings):
    """What one request may ask for. These bounds appear in the OpenAPI schema."""

    model_config = SettingsConfigDict(env_prefix="MT_", extra="ignore", frozen=True)

    max_chars: int = Field(20_000, ge=1, description="characters per request, all items together")
    max_items: int = Field(128, ge=1, description="items in a list of texts")
    max_sentence_tokens: int = Field(200, ge=8, description="tokens per sentence; longer ones are split")
    max_beam_size: int = Field(8, ge=1, le=16)
    max_output_tokens: int = Field(512, ge=8, description="upper bound for max_length")
    max_alternatives: int = Field(4, ge=0, description="upper bound for num_alternatives")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="request body size (413 beyond)")
    max_json_depth: int = Field(8, ge=2, description="nesting depth of a JSON body")
    body_timeout_s: float = Field(15.0, gt=0, description="time to receive a request body (408 beyond: slow clients)")
    max_request_tokens: int = Field(8192, ge=64, description="source tokens per request, all sentences together")
    default_timeout_s: float = Field(60.0, gt=0, description="deadline of a request that sets none")
    max_timeout_s: float = Field(300.0, gt=0, description="the longest deadline a request may set")

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if self.max_alternatives >= self.max_beam_size + 1:
            raise ValueError("max_alternatives must be < max_beam_size (alternatives come from the beam)")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must be <= max_timeout_s")
        return self


class BatchingConfig(BaseSettings):
    """How a model replica batches; live-tunable through the deployment's user_config.

    mode "continuous": iteration-level batching (sentences join and leave the decoder batch at
    every step); mode "request": request-level dynamic batching (`@serve.batch`)."""

    model_config = SettingsConfigDict(env_prefix="MT_BATCH_", extra="forbid")

    # continuous won the side-by-side benchmark (README: same answers; where request mode passes
    # a 2-s p99, at 24 req/s, continuous has 0.30x its p99)
    mode: Literal["continuous", "request"] = "continuous"
    max_batch_tokens: int = Field(4096, ge=64, description="token budget of one batch (source tokens x beam)")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=1.0, description="request mode: wait to fill a batch")
    max_batch_sentences: int = Field(64, ge=1, description="request mode: sentences decoded together at most")
    slots: int = Field(64, ge=8, description="continuous mode: decoder rows (a beam of k holds k)")
    engine_process: bool = Field(True, description="continuous mode: the engine runs in a process of its own "
                                 "(no interpreter lock shared with the HTTP server)")
    admit_batch: int = Field(8, ge=1, description="continuous mode: while sentences run, newcomers join together "
                             "once this many wait ...")
    admit_wait_s: float = Field(0.05, ge=0.0, le=1.0, description="... or the oldest has waited this long")
    max_queue_delay_s: float = Field(0.5, gt=0, description="a replica answers new requests 503 + Retry-After while "
                                     "it holds more sentences than it finishes in this time, and than its `slots`")
    max_pending_sentences: int = Field(4096, ge=1, description="... and always past this many")
    max_encode_tokens: int = Field(2048, ge=64,
                                   description="continuous mode: source tokens encoded between two decoder steps")


class Security(BaseSettings):
    """API keys and rate limits. Keys come from the environment or a file (a mounted Secret),
    never from values files, logs or metric labels."""

    model_config = SettingsConfigDict(env_prefix="MT_", extra="ignore")

    api_keys: SecretStr | None = Field(None, description="comma-separated keys (MT_API_KEYS)")
    api_keys_file: str | None = Field(None, description="a file with one key per line (MT_API_KEYS_FILE)")
    rate_limit_per_minute: int = Field(0, ge=0, description="texts per minute per key; 0: no limit")
