"""The shipped English<->German model: present, small, loads in our engine and in `transformers`, and
translates held-out sentences the way a human translator did (golden tests: a broken loader,
tokenizer or decoder fails loudly here, whatever the random-weight tests say)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.translator import EMBEDDED_MODEL, Translator
from tests.helpers import hf_tokens

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 25 * 1024 * 1024

# Held-out Multi30k test_2016_flickr sentences (never trained on) whose reference translation the
# shipped model reproduces exactly with its default settings (beam 4): (source, target_lang, reference).
GOLDEN: list[tuple[str, str, str]] = [
    ("A boy stands with three girls.", "de", "Ein Junge steht mit drei Mädchen."),
    ("A blond child swinging on a swing.", "de", "Ein blondes Kind schaukelt auf einer Schaukel."),
    ("Two children are playing on a bicycle.", "de", "Zwei Kinder spielen auf einem Fahrrad."),
    ("A woman is laying down on a sofa laughing.", "de", "Eine Frau liegt auf einem Sofa und lacht."),
    ("A brown dog is digging in the dirt.", "de", "Ein brauner Hund gräbt im Dreck."),
    ("Two brown dogs are running through the snow.", "de", "Zwei braune Hunde rennen durch den Schnee."),
    ("Zwei Männer mit Mützen.", "en", "Two men wearing hats."),
    ("Eine Frau hält eine kleine weiße Statue.", "en", "A woman is holding a small white statue."),
    ("Ein Mann mit Sonnenbrille fährt auf einem Roller.", "en", "A man wearing sunglasses is riding a scooter."),
    ("Zwei Jungen spielen auf dem Gehsteig.", "en", "Two boys are playing on the sidewalk."),
    ("Der weiße Hund läuft im flachen Wasser.", "en", "The white dog is running in the shallow water."),
    ("Ein Mann im Anzug sitzt an einer Bushaltestelle.", "en", "A man in a suit is sitting at a bus stop."),
]


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator(EMBEDDED_MODEL)


def test_shipped_files_and_size():
    names = {p.name for p in EMBEDDED_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json", "MODEL_CARD.md"} <= names
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{size / 2**20:.1f} MiB"
    with safe_open(EMBEDDED_MODEL / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (not iterable)
    cfg = json.loads((EMBEDDED_MODEL / "config.json").read_text())
    assert cfg["model_type"] == "marian"


def test_golden_sentences(translator):
    assert len(GOLDEN) >= 8
    for target in ("de", "en"):
        cases = [(s, ref) for s, t, ref in GOLDEN if t == target]
        got = [t.text for t in translator.translate_batch([s for s, _ in cases], target_lang=target)]
        assert got == [ref for _, ref in cases]


def test_both_directions_need_a_target(translator):
    assert translator.resolve_target("en") == "en"
    with pytest.raises(KeyError):
        translator.resolve_target("fr")


def test_command_line_translates():
    src, target, ref = next(g for g in GOLDEN if g[1] == "de")
    out = subprocess.run([sys.executable, "-m", "model.translate", "--target", target, src], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ref + "\n"


def test_transformers_loads_the_shipped_weights_and_agrees(translator):
    """Same greedy tokens as transformers' MarianMTModel on the same fp16 weights (run in fp32)."""
    from transformers import MarianMTModel

    from model.decoding import generate
    from model.generation import GenerationSettings
    from model.translator import pad_batch

    hf = MarianMTModel.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    tok = translator.tokenizer
    texts = [s for s, _, _ in GOLDEN]
    targets = [t for _, t, _ in GOLDEN]
    ids = [tok.encode_batch([s], target_lang=t)[0] for s, t in zip(texts, targets)]
    src = pad_batch(ids, tok.pad_id)
    settings = GenerationSettings(beam_size=1, max_length=64, banned_ids=(tok.pad_id,))
    assert next(translator.model.parameters()).dtype == torch.float32  # fp16 on disk, fp32 on the CPU
    ours = [h[0].tokens for h in generate(translator.model, src, settings)]
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=(src != tok.pad_id).long(), num_beams=1, do_sample=False,
                          max_new_tokens=64)
    assert ours == hf_tokens(out, hf.config)
