"""oneDNN-packed weights (model/packed.py) change speed, not answers."""

from __future__ import annotations

import copy

import pytest
import torch

from loadtests.workload import held_out_pairs
from model.checkpoint import load_model
from model.decoding import generate
from model.generation import GenerationSettings
from model.packed import FEW_ROWS, PackedHead, PackedLinear, available, packs_every_layer, unpack_linears
from model.tokenizer import MarianTokenizer
from model.translator import EMBEDDED_MODEL, pad_batch

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")


@pytest.fixture(scope="module")
def models():
    packed = load_model(EMBEDDED_MODEL, device="cpu", dtype=torch.float32)
    plain = copy.deepcopy(packed)
    plain.packed_head = None
    unpack_linears(plain)
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    return packed, plain


def test_load_model_packs_for_fp32_cpu(models):
    packed, plain = models
    assert isinstance(packed.packed_head, PackedHead)
    layers = [m for m in packed.modules() if isinstance(m, torch.nn.Linear) and m is not packed.lm_head]
    assert all(isinstance(m, PackedLinear) for m in layers) == packs_every_layer()
    # checkpoints are unchanged: same names, same tensors
    assert list(packed.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(packed.state_dict().values(), plain.state_dict().values()))
    assert load_model(EMBEDDED_MODEL, device="cpu", dtype=torch.bfloat16).packed_head is None


def test_logits_match_the_plain_projection(models):
    packed, _ = models
    x = torch.randn(7, packed.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = packed.lm_head(x) + packed.final_logits_bias
        torch.testing.assert_close(packed.packed_head(x), plain, rtol=1e-4, atol=1e-4)


def test_a_final_logits_bias_is_added_by_the_packed_projection():
    gen = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(32, 300, bias=False)
    bias = torch.randn(300, generator=gen)
    x = torch.randn(5, 32, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(PackedHead(linear, bias)(x), linear(x) + bias, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(PackedHead(linear, bias))(x), linear(x) + bias, rtol=1e-5, atol=1e-5)
        assert PackedHead(linear, torch.zeros(300)).bias is None  # nothing to add: no pass over the logits


@pytest.mark.parametrize("beam", [1, 4])
def test_held_out_translations_are_token_identical(models, beam):
    packed, plain = models
    tok = MarianTokenizer(EMBEDDED_MODEL)
    sources = tok.encode_batch([en for en, _ in held_out_pairs()[:96]], target_lang="de")
    settings = GenerationSettings(beam_size=beam, max_length=128, banned_ids=(tok.pad_id,))
    with torch.inference_mode():
        for start in range(0, len(sources), 16):
            batch = pad_batch(sources[start : start + 16], tok.pad_id)
            ours, reference = generate(packed, batch, settings), generate(plain, batch, settings)
            assert [h[0].tokens for h in ours] == [h[0].tokens for h in reference]


def test_a_packed_layer_computes_its_linear():
    gen = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(48, 80)
    x = torch.randn(4, 7, 48, generator=gen)
    layer = PackedLinear.of(linear)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(layer)(x), linear(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_a_split_layer_computes_its_linear_at_every_row_count(bias):
    gen = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(48, 80, bias=bias)
    layer = PackedLinear.of(linear, few_rows=True)
    assert layer.split is not None
    with torch.inference_mode():
        for rows in (1, 2, FEW_ROWS + 1, 9):  # split copy, then oneDNN
            x = torch.randn(rows, 48, generator=gen)
            torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(copy.deepcopy(layer)(x), linear(x), rtol=1e-5, atol=1e-5)
    assert copy.deepcopy(layer).split is not None
    assert PackedLinear.of(torch.nn.Linear(48, 81), few_rows=True).split is None  # no even split
    assert PackedLinear.of(torch.nn.Linear(1024, 1024), few_rows=True).split is None  # large: oneDNN is as fast


def test_only_the_decoding_step_layers_keep_a_split_copy(models):
    packed, _ = models
    if not packs_every_layer():
        pytest.skip("layers other than the output projection are packed on AVX-512 CPUs only")
    step_layers = [m for layer in packed.decoder for name, m in layer.named_modules()
                   if isinstance(m, PackedLinear) and name != "cross_attn.kv"]
    assert step_layers and all(m.split is not None for m in step_layers)
    assert all(layer.cross_attn.kv.split is None for layer in packed.decoder)  # projects whole sources
    assert not any(getattr(m, "split", None) is not None for m in packed.encoder.modules())


def test_deepcopy_and_int8_quantization(models):
    from model.quantize import quantize_int8

    packed, _ = models
    twin = copy.deepcopy(packed)  # oneDNN tensors cannot be copied: the copy re-packs
    x = torch.randn(3, packed.cfg.d_model)
    with torch.inference_mode():
        torch.testing.assert_close(twin.packed_head(x), packed.packed_head(x))
        torch.testing.assert_close(twin.decoder[0].ffn.fc1(x), packed.decoder[0].ffn.fc1(x))
    int8 = quantize_int8(packed)
    assert int8.packed_head is None  # int8 uses its own quantized projection
    assert not any(isinstance(m, PackedLinear) for m in int8.modules())  # every layer quantized
    assert isinstance(packed.packed_head, PackedHead)  # the original is left as it was
