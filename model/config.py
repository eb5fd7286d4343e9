"""Model configuration, read from and written to a Hugging Face `MarianConfig` config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.errors import CheckpointError

# Names Hugging Face uses in `activation_function` (ACT2FN) that Marian checkpoints carry.
ACTIVATIONS = ("swish", "silu", "relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "swish"  # OPUS-MT models use swish
    scale_embedding: bool = True  # Marian multiplies embeddings by sqrt(d_model)
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    eos_token_id: int = 0
    decoder_start_token_id: int = 0  # Marian starts decoding from the pad token
    # None means "same as vocab_size", as in MarianConfig.
    decoder_vocab_size: int | None = None
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = True
    # Training-only regularisation; inference ignores them.
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    # Everything else from config.json, kept so a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.decoder_vocab_size is None:
            self.decoder_vocab_size = self.vocab_size
        if self.activation_function not in ACTIVATIONS:
            raise CheckpointError(
                f"activation_function must be one of {list(ACTIVATIONS)}. "
                f"Given: {self.activation_function!r}"
            )
        for prefix in ("encoder", "decoder"):
            heads = getattr(self, f"{prefix}_attention_heads")
            if self.d_model % heads:
                raise CheckpointError(
                    f"d_model ({self.d_model}) must be divisible by {prefix}_attention_heads ({heads})"
                )
        if not self.share_encoder_decoder_embeddings and self.decoder_vocab_size is None:
            raise CheckpointError("decoder_vocab_size is required when embeddings are not shared")

    @property
    def target_vocab_size(self) -> int:
        # MarianMTModel sizes lm_head by vocab_size when embeddings are shared.
        if self.share_encoder_decoder_embeddings:
            return self.vocab_size
        assert self.decoder_vocab_size is not None
        return self.decoder_vocab_size

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        values = {k: raw[k] for k in known if k in raw and raw[k] is not None}
        if "vocab_size" not in values:
            raise CheckpointError("config.json has no vocab_size")
        eos = values.get("eos_token_id")
        if isinstance(eos, list):
            values["eos_token_id"] = eos[0]
        extra = {k: v for k, v in raw.items() if k not in known}
        try:
            return cls(**values, extra=extra)
        except TypeError as exc:
            raise CheckpointError(f"config.json has a field of the wrong type: {exc}") from exc

    @classmethod
    def from_marian(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"no config.json in {file.parent}") from exc
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    def to_marian_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        fields = asdict(self)
        fields.pop("extra")
        out.update(fields)
        out.update(
            {
                "model_type": "marian",
                "architectures": ["MarianMTModel"],
                "is_encoder_decoder": True,
                "normalize_before": False,
                "static_position_embeddings": True,
            }
        )
        return out
