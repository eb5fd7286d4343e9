"""Loading, saving and refusing checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import load_model, save_model
from model.config import ModelConfig
from model.decoding import generate
from model.errors import CheckpointError
from model.generation import GenerationSettings
from model.transformer import Transformer
from tests.helpers import random_sources


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_save_then_load_is_identical_and_opens_in_transformers(hf_checkpoint, tmp_path):
    from transformers import MarianMTModel

    path, _ = hf_checkpoint
    ours = load_model(path, device="cpu")
    save_model(ours, tmp_path / "saved", generation=GenerationSettings.from_checkpoint(path, ours.cfg.pad_token_id))
    again = load_model(tmp_path / "saved", device="cpu")
    cfg = ours.cfg
    src = random_sources(12, cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, seed=3)
    settings = GenerationSettings.from_checkpoint(tmp_path / "saved", cfg.pad_token_id).override(beam_size=2)
    assert [h[0].tokens for h in generate(ours, src, settings)] == [h[0].tokens for h in generate(again, src, settings)]

    hf = MarianMTModel.from_pretrained(tmp_path / "saved").eval()
    tgt = torch.full((src.shape[0], 1), cfg.decoder_start_token_id)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=(src != cfg.pad_token_id).long(), decoder_input_ids=tgt).logits
        mine = ours(src, tgt)
    assert (ref - mine).abs().max().item() <= 1e-4


def test_our_own_model_round_trips_through_transformers(tmp_path):
    """A model built here (not by transformers) saves in a layout transformers reads."""
    from transformers import MarianMTModel

    cfg = ModelConfig(vocab_size=120, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=119,
                      decoder_start_token_id=119, max_position_embeddings=64)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    save_model(model, tmp_path)
    hf = MarianMTModel.from_pretrained(tmp_path).eval()
    src = random_sources(4, 120, 119, 0, seed=1)
    tgt = torch.full((4, 1), 119)
    with torch.no_grad():
        assert (hf(input_ids=src, attention_mask=(src != 119).long(), decoder_input_ids=tgt).logits
                - model(src, tgt)).abs().max() <= 1e-5


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(tiny_model, tmp_path):
    path = _copy(tiny_model, tmp_path / "m")
    _rewrite(path, lambda t: t.pop("model.decoder.layers.1.fc2.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.decoder.layers.1.fc2.weight'\]"):
        load_model(path, device="cpu")


def test_unexpected_tensor_is_named(tiny_model, tmp_path):
    path = _copy(tiny_model, tmp_path / "m")
    _rewrite(path, lambda t: t.update({"model.decoder.layers.7.fc2.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected \['model.decoder.layers.7.fc2.weight'\]"):
        load_model(path, device="cpu")


def test_wrong_shape_is_named(tiny_model, tmp_path):
    path = _copy(tiny_model, tmp_path / "m")
    _rewrite(path, lambda t: t.update({"model.encoder.layers.0.fc1.weight": torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match=r"model.encoder.layers.0.fc1.weight has shape \(3, 3\), expected"):
        load_model(path, device="cpu")


def test_unknown_activation_is_named(tiny_model, tmp_path):
    path = _copy(tiny_model, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["activation_function"] = "tanhshrink"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"activation_function must be one of .* Given: 'tanhshrink'"):
        load_model(path, device="cpu")


def test_not_safetensors_is_refused(tiny_model, tmp_path):
    path = _copy(tiny_model, tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(path, device="cpu")


class _Exploit:
    """Pickles into a call of os.system: what a malicious pytorch_model.bin carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_checkpoint(path: Path, marker: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"vocab_size": 10, "d_model": 8, "encoder_attention_heads": 2,
                                                   "decoder_attention_heads": 2}))
    torch.save({"model.shared.weight": _Exploit(marker)}, path / "pytorch_model.bin")
    return path


def test_pickle_needs_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    path = _pickle_checkpoint(tmp_path / "m", marker)
    with pytest.raises(CheckpointError, match="explicit opt-in"):
        load_model(path, device="cpu")
    assert not marker.exists()


def test_pickle_with_code_is_refused_even_with_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    path = _pickle_checkpoint(tmp_path / "m", marker)
    with pytest.raises(CheckpointError, match="weights-only unpickler"):
        load_model(path, device="cpu", trust_pickle=True)
    assert not marker.exists()


def test_legacy_bin_loads_with_opt_in_and_converts(hf_checkpoint, tmp_path):
    from model.convert import convert

    path, _ = hf_checkpoint
    legacy = _copy(path, tmp_path / "legacy")
    tensors = load_file(str(legacy / "model.safetensors"))
    torch.save(tensors, legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()
    model = load_model(legacy, device="cpu", trust_pickle=True)
    convert(legacy, trust_pickle=True)
    assert (legacy / "model.safetensors").exists()
    again = load_model(legacy, device="cpu")  # now without any opt-in
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
