from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import marian_config, save_hf_model, tiny_model_dir

# Three shapes of checkpoint the loader must handle: activations, tying, vocab layout, depth.
CONFIGS = {
    "swish-shared-tied": dict(),
    "gelu-shared-untied": dict(activation_function="gelu", tie_word_embeddings=False, scale_embedding=False,
                               vocab_size=500, pad_token_id=499, decoder_start_token_id=499, encoder_layers=3,
                               decoder_layers=1, d_model=48, encoder_attention_heads=6, decoder_attention_heads=6),
    "relu-separate-vocabs": dict(activation_function="relu", share_encoder_decoder_embeddings=False,
                                 vocab_size=400, decoder_vocab_size=350, pad_token_id=349,
                                 decoder_start_token_id=349, encoder_layers=1, decoder_layers=3),
}


@pytest.fixture(scope="session", params=list(CONFIGS))
def hf_checkpoint(request, tmp_path_factory) -> tuple[Path, object]:
    """(directory, transformers model) for each random config."""
    path = tmp_path_factory.mktemp(request.param)
    model = save_hf_model(marian_config(**CONFIGS[request.param]), path, seed=len(request.param))
    return path, model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A Marian directory with a real sentencepiece tokenizer and random weights."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))
