"""Tiny real things for tests: random Marian checkpoints saved by transformers, a sentencepiece
model trained on the spot, and a model directory that pairs them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from loadtests import workload

WORDS_EN = """a man woman child dog cat ball street water red blue green small big young old runs jumps plays
sits walks on in at with near the of two three people group shirt hat bike car house tree park beach snow grass
field city music guitar playing wearing holding looking""".split()
WORDS_DE = """ein mann frau kind hund katze ball straße wasser rot blau grün klein groß jung alt läuft springt
spielt sitzt geht auf in an mit bei der die das zwei drei leute gruppe hemd hut fahrrad auto haus baum park strand
schnee gras feld stadt musik gitarre spielen trägt hält schaut""".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = WORDS_EN if i % 2 else WORDS_DE
        s = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        out.append(s[0].upper() + s[1:] + rng.choice([".", "!", "?", ""]))
    return out


def marian_config(**overrides):
    from transformers import MarianConfig

    base = dict(vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=299,
                decoder_start_token_id=299, eos_token_id=0, forced_eos_token_id=0, max_position_embeddings=128,
                activation_function="swish", scale_embedding=True, init_std=0.3)
    base.update(overrides)
    return MarianConfig(**base)


def save_hf_model(cfg, path: Path, seed: int = 0, max_length: int = 30, num_beams: int = 1):
    """A random MarianMTModel saved with save_pretrained; returns the transformers model."""
    from transformers import MarianMTModel

    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)  # nonzero, so a loader that drops it fails
    gc = model.generation_config
    gc.bad_words_ids = [[cfg.pad_token_id]]
    gc.max_length = max_length
    gc.num_beams = num_beams
    gc.forced_eos_token_id = cfg.eos_token_id
    gc.decoder_start_token_id = cfg.decoder_start_token_id
    model.save_pretrained(path)
    return model


def random_sources(n: int, vocab: int, pad: int, eos: int, seed: int = 0, max_len: int = 24) -> torch.Tensor:
    """(n, S) right-padded random sources of varied lengths, each ending in EOS."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len, (n,), generator=gen)
    src = torch.full((n, int(lengths.max())), pad, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        ids = torch.randint(0, vocab, (length - 1,), generator=gen)
        ids[(ids == pad) | (ids == eos)] = 5
        src[i, : length - 1] = ids
        src[i, length - 1] = eos
    return src


def train_spm(out_dir: Path, vocab_size: int = 400) -> None:
    """A real sentencepiece model (source.spm = target.spm) and a Marian vocab.json for it."""
    from model.data.vocab import write_tokenizer

    write_tokenizer(sentences(600), out_dir, vocab_size)


def tiny_model_dir(out_dir: Path, seed: int = 0) -> Path:
    """A complete Marian directory: real tokenizer files plus a random model sized to them."""
    train_spm(out_dir)
    vocab = json.loads((out_dir / "vocab.json").read_text())
    pad = vocab["<pad>"]
    cfg = marian_config(vocab_size=len(vocab), pad_token_id=pad, decoder_start_token_id=pad)
    save_hf_model(cfg, out_dir, seed=seed)
    return out_dir


def hf_tokens(out: torch.Tensor, cfg) -> list[list[int]]:
    """transformers' generate() output -> generated ids without the start token, EOS and padding."""
    return workload.hf_tokens(out.tolist(), cfg.eos_token_id, cfg.pad_token_id)


def metric_sum(metrics_url: str, name: str, *labels: str) -> float:
    """A metric summed over its series (Ray exports one per replica) whose labels include all `labels`."""
    import httpx

    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(label in line for label in labels))
