"""Marian checkpoints in the Hugging Face layout: load, save, convert.

The mapping from their tensor names to ours is plain data. Our attention projections are fused
(q|k|v for self-attention, k|v for cross-attention), so one of our tensors may be the
concatenation (along dim 0) of several of theirs.
Weights are read from safetensors; a legacy `pytorch_model.bin` only with an explicit opt-in,
through `torch.load(weights_only=True)`, so no code in a checkpoint is ever executed.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from model.config import ModelConfig
from model.errors import CheckpointError
from model.generation import GenerationSettings
from model.transformer import Transformer

TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "target_vocab.json", "tokenizer_config.json")
IGNORED = {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}  # recomputed


def _layer_map(ours: str, theirs: str, self_attn: str, cross: bool) -> dict[str, list[str]]:
    m: dict[str, list[str]] = {}
    for p in ("weight", "bias"):
        m[f"{ours}.self_attn.qkv.{p}"] = [f"{theirs}.{self_attn}.{x}_proj.{p}" for x in "qkv"]
        m[f"{ours}.self_attn.out.{p}"] = [f"{theirs}.{self_attn}.out_proj.{p}"]
        m[f"{ours}.self_attn_norm.{p}"] = [f"{theirs}.self_attn_layer_norm.{p}"]
        m[f"{ours}.ffn.fc1.{p}"] = [f"{theirs}.fc1.{p}"]
        m[f"{ours}.ffn.fc2.{p}"] = [f"{theirs}.fc2.{p}"]
        m[f"{ours}.ffn_norm.{p}"] = [f"{theirs}.final_layer_norm.{p}"]
        if cross:
            m[f"{ours}.cross_attn.q.{p}"] = [f"{theirs}.encoder_attn.q_proj.{p}"]
            m[f"{ours}.cross_attn.kv.{p}"] = [f"{theirs}.encoder_attn.{x}_proj.{p}" for x in "kv"]
            m[f"{ours}.cross_attn.out.{p}"] = [f"{theirs}.encoder_attn.out_proj.{p}"]
            m[f"{ours}.cross_attn_norm.{p}"] = [f"{theirs}.encoder_attn_layer_norm.{p}"]
    return m


def weight_map(cfg: ModelConfig) -> dict[str, list[list[str]]]:
    """Our parameter name -> alternatives, each a list of their names to concatenate.

    Alternatives exist because Hugging Face stores shared or tied embeddings under one of
    several names depending on the version that saved them."""
    m: dict[str, list[list[str]]] = {"final_logits_bias": [["final_logits_bias"]]}
    m["enc_embed.weight"] = [["model.encoder.embed_tokens.weight"], ["model.shared.weight"]]
    if not (cfg.share_encoder_decoder_embeddings and cfg.tie_word_embeddings):
        m["dec_embed.weight"] = [["model.decoder.embed_tokens.weight"], ["model.shared.weight"]]
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = [["lm_head.weight"]]
    for i in range(cfg.encoder_layers):
        for ours, theirs in _layer_map(f"encoder.{i}", f"model.encoder.layers.{i}", "self_attn", False).items():
            m[ours] = [theirs]
    for i in range(cfg.decoder_layers):
        for ours, theirs in _layer_map(f"decoder.{i}", f"model.decoder.layers.{i}", "self_attn", True).items():
            m[ours] = [theirs]
    return m


def read_tensors(path: Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors from model.safetensors, or (opt-in only) from a legacy pytorch_model.bin."""
    st = path / "model.safetensors"
    if st.exists():
        try:
            return load_file(str(st))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{st} is not a readable safetensors file: {exc}") from exc
    legacy = path / "pytorch_model.bin"
    if not legacy.exists():
        raise CheckpointError(f"no model.safetensors (or pytorch_model.bin) in {path}")
    if not trust_pickle:
        raise CheckpointError(
            f"{path} has only pytorch_model.bin, a pickle. Loading it needs an explicit opt-in "
            "(--trust-pickle / trust_pickle=True); convert it once with "
            "`python -m model.convert DIR --trust-pickle` and load the safetensors file instead."
        )
    try:
        state = torch.load(str(legacy), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{legacy} was refused by the weights-only unpickler (it may carry code): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{legacy} does not hold a flat dict of tensors")
    return state


def _resolve(theirs: dict[str, Tensor], alternatives: list[list[str]]) -> tuple[Tensor | None, list[str]]:
    for names in alternatives:
        if all(n in theirs for n in names):
            parts = [theirs[n] for n in names]
            return (parts[0] if len(parts) == 1 else torch.cat(parts, 0)), names
    return None, alternatives[0]


def state_from_marian(cfg: ModelConfig, theirs: dict[str, Tensor], model: Transformer) -> dict[str, Tensor]:
    """Map and check their tensors against our model's parameters; a clear error on any mismatch."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ours: dict[str, Tensor] = {}
    missing: list[str] = []
    used: set[str] = set()
    for name, alternatives in weight_map(cfg).items():
        tensor, names = _resolve(theirs, alternatives)
        if tensor is None:
            missing.extend(n for n in names if n not in theirs)
            continue
        used.update(names)
        if name == "final_logits_bias":
            tensor = tensor.reshape(-1)
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"tensor {' + '.join(names)} has shape {tuple(tensor.shape)}, expected {tuple(expected[name])} "
                f"(for {name}; check config.json)"
            )
        ours[name] = tensor
    aliases = {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight"}
    unexpected = sorted(k for k in theirs if k not in used and k not in IGNORED and k not in aliases)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match config: missing tensors {missing}, unexpected {unexpected}")
    return ours


def load_model(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               trust_pickle: bool = False) -> Transformer:
    """A Marian directory -> our Transformer in eval mode, on `device` (CUDA if available)."""
    path = Path(path)
    cfg = ModelConfig.from_marian(path)
    theirs = read_tensors(path, trust_pickle)
    with torch.device("meta"):
        model = Transformer(cfg)
    state = state_from_marian(cfg, theirs, model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=False)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.dec_embed.weight
    # Buffers that are not in the checkpoint are rebuilt after to_empty().
    from model.positions import sinusoids

    model.positions = sinusoids(cfg.max_position_embeddings, cfg.d_model).to(device=device, dtype=dtype)
    model = model.to(dtype).eval()
    model.pack_for_cpu()
    if device.type == "cpu":
        from model.allocator import keep_freed_memory

        keep_freed_memory()  # a CPU decoding step reuses its large buffers instead of page-faulting them in
    return model


def marian_tensors(model: Transformer) -> dict[str, Tensor]:
    """Our state -> their names, split back into q/k/v and laid out as transformers saves it."""
    cfg = model.cfg
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    one_table = cfg.share_encoder_decoder_embeddings and cfg.tie_word_embeddings
    for name, alternatives in weight_map(cfg).items():
        names = alternatives[-1] if name == "enc_embed.weight" and one_table else alternatives[0]
        tensor = state[name]
        if name == "final_logits_bias":
            tensor = tensor[None, :]
        for their, part in zip(names, tensor.chunk(len(names), 0)):
            out[their] = part.contiguous().clone()
    if cfg.share_encoder_decoder_embeddings and not one_table:
        out["model.shared.weight"] = out["model.encoder.embed_tokens.weight"].clone()
    return out


def save_model(model: Transformer, path: str | Path, *, tokenizer_dir: str | Path | None = None,
               generation: GenerationSettings | None = None, dtype: torch.dtype | None = None) -> None:
    """Write config.json, generation_config.json and model.safetensors (plus tokenizer files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    tensors = {k: (v.to(dtype) if dtype else v).cpu() for k, v in marian_tensors(model).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg.to_marian_dict(), indent=2) + "\n")
    gen = generation or GenerationSettings(banned_ids=(cfg.pad_token_id,))
    gen_json = gen.to_hf(cfg.eos_token_id, cfg.pad_token_id, cfg.decoder_start_token_id)
    (path / "generation_config.json").write_text(json.dumps(gen_json, indent=2) + "\n")
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != path.resolve():
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).exists():
                shutil.copy(Path(tokenizer_dir) / name, path / name)
