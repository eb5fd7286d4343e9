"""Train the embedded two-way English<->German model and export it in the Marian layout.

    python -m model.train --multi30k ../shared/data/multi30k --ding /usr/share/trans/de-en \
        --work runs/embedded --out models/embedded-en-de

One model serves both directions: the source starts with `>>de<<` or `>>en<<`. Each epoch
uses all of Multi30k in both directions plus a fresh sample of the Ding dictionary.
Label smoothing, Adam with warm-up and inverse-sqrt decay, token-count batches, dev loss and
dev chrF each epoch, averaging of the last checkpoints. Seeded; resumable from --work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from model.checkpoint import save_model
from model.config import ModelConfig
from model.data import ding, multi30k
from model.data.vocab import write_tokenizer
from model.decoding import generate
from model.fast_dropout import use_pooled_dropout
from model.generation import GenerationSettings
from model.tokenizer import MarianTokenizer
from model.transformer import Transformer

Example = tuple[list[int], list[int]]  # (source ids with >>lang<< and </s>, target ids with </s>)


@dataclass
class TrainConfig:
    multi30k: str = "../shared/data/multi30k"
    ding: str = str(ding.DEFAULT_PATH)
    work: str = "runs/embedded"
    out: str = "models/embedded-en-de"
    vocab_size: int = 8000
    d_model: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 3
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.15
    attention_dropout: float = 0.0  # SDPA's dropout draws fresh random numbers: too slow on CPU
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    lr: float = 1e-3
    warmup: int = 400
    batch_tokens: int = 5000
    epochs: int = 8  # the shipped model's budget (2 CPU cores, about 3.5 hours)
    ding_per_epoch: int = 10_000  # dictionary pairs sampled each epoch (both directions)
    multi30k_only_last: int = 3  # final epochs on Multi30k alone (in-domain fine-tuning)
    average_last: int = 2
    dev_chrf_sentences: int = 300
    max_hours: float = 0.0  # stop after this many hours (0: no limit); the last checkpoints are averaged
    seed: int = 1
    threads: int = 0  # 0: all cores


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# -- data ---------------------------------------------------------------------------------
def both_directions(pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(english, german) -> (target_lang, source, target) for en->de and de->en."""
    return [("de", en, de) for en, de in pairs] + [("en", de, en) for en, de in pairs]


def encode(tok: MarianTokenizer, triples: list[tuple[str, str, str]]) -> list[Example]:
    out: list[Example] = []
    for lang in ("de", "en"):
        chosen = [t for t in triples if t[0] == lang]
        src = tok.encode_batch([s for _, s, _ in chosen], target_lang=lang)
        tgt = tok.encode_batch([t for _, _, t in chosen])
        out.extend(zip(src, tgt))
    return out


def batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Token-count batches: similar lengths together (little padding), then shuffled."""
    keyed = sorted(examples, key=lambda e: (len(e[0]) + rng.random() * 2, len(e[1])))
    out, cur, longest = [], [], 0
    for ex in keyed:
        size = max(longest, len(ex[0]), len(ex[1]))
        if cur and size * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, size = [], max(len(ex[0]), len(ex[1]))
        cur.append(ex)
        longest = size
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(batch: list[Example], pad: int, start: int) -> tuple[Tensor, Tensor, Tensor]:
    s = max(len(x) for x, _ in batch)
    t = max(len(y) for _, y in batch)
    src = torch.full((len(batch), s), pad, dtype=torch.long)
    tgt_in = torch.full((len(batch), t), pad, dtype=torch.long)
    tgt_out = torch.full((len(batch), t), pad, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        src[i, : len(x)] = torch.tensor(x)
        tgt_in[i, 0] = start
        tgt_in[i, 1 : len(y)] = torch.tensor(y[:-1])
        tgt_out[i, : len(y)] = torch.tensor(y)
    return src, tgt_in, tgt_out


# -- model --------------------------------------------------------------------------------
def build_model(tc: TrainConfig, vocab: dict[str, int]) -> Transformer:
    pad = vocab["<pad>"]
    cfg = ModelConfig(
        vocab_size=len(vocab), d_model=tc.d_model, encoder_layers=tc.encoder_layers,
        decoder_layers=tc.decoder_layers, encoder_attention_heads=tc.heads, decoder_attention_heads=tc.heads,
        encoder_ffn_dim=tc.ffn_dim, decoder_ffn_dim=tc.ffn_dim, activation_function="swish",
        scale_embedding=True, max_position_embeddings=512, pad_token_id=pad, eos_token_id=vocab["</s>"],
        decoder_start_token_id=pad, dropout=tc.dropout, attention_dropout=tc.attention_dropout,
        activation_dropout=tc.activation_dropout,
    )
    model = Transformer(cfg)
    for name, p in model.named_parameters():
        if name.endswith("embed.weight"):
            torch.nn.init.normal_(p, 0.0, tc.d_model ** -0.5)  # scaled by sqrt(D) on the way in
        elif p.dim() == 2:
            torch.nn.init.xavier_uniform_(p)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    with torch.no_grad():
        model.enc_embed.weight[pad].zero_()
    use_pooled_dropout(model, tc.seed)
    return model


def lr_at(step: int, tc: TrainConfig) -> float:
    step = max(step, 1)
    return tc.lr * min(step / tc.warmup, math.sqrt(tc.warmup / step))


def loss_fn(model: Transformer, batch: tuple[Tensor, Tensor, Tensor], smoothing: float) -> tuple[Tensor, int]:
    src, tgt_in, tgt_out = batch
    logits = model(src, tgt_in)
    pad = model.cfg.pad_token_id
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt_out.view(-1), ignore_index=pad,
                           label_smoothing=smoothing, reduction="sum")
    return loss, int((tgt_out != pad).sum())


@torch.no_grad()
def dev_loss(model: Transformer, examples: list[Example], tc: TrainConfig) -> float:
    model.eval()
    total, count = 0.0, 0
    for b in batches(examples, tc.batch_tokens, random.Random(0)):
        loss, n = loss_fn(model, collate(b, model.cfg.pad_token_id, model.cfg.decoder_start_token_id), 0.0)
        total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1)


def translate_all(model: Transformer, tok: MarianTokenizer, texts: list[str], lang: str, beam: int = 1,
                  batch_size: int = 64) -> list[str]:
    """Translate with our own decoder, longest first in fixed-size batches."""
    model.eval()
    settings = GenerationSettings(beam_size=beam, max_length=256, banned_ids=(tok.pad_id,), max_length_a=2.0,
                                  max_length_b=10)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [""] * len(texts)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        ids = tok.encode_batch([texts[j] for j in idx], target_lang=lang)
        src = torch.full((len(ids), max(map(len, ids))), tok.pad_id, dtype=torch.long)
        for r, x in enumerate(ids):
            src[r, : len(x)] = torch.tensor(x)
        for j, hyps in zip(idx, generate(model, src, settings)):
            out[j] = tok.decode(hyps[0].tokens)
    model.train()
    return out


def dev_chrf(model: Transformer, tok: MarianTokenizer, val: list[tuple[str, str]], n: int) -> dict[str, float]:
    import sacrebleu

    pairs = val[:n]
    en, de = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        "en-de": sacrebleu.corpus_chrf(translate_all(model, tok, en, "de"), [de]).score,
        "de-en": sacrebleu.corpus_chrf(translate_all(model, tok, de, "en"), [en]).score,
    }


def average(paths: list[Path]) -> dict[str, Tensor]:
    states = [torch.load(p, map_location="cpu", weights_only=True)["model"] for p in paths]
    return {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}


# -- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in asdict(TrainConfig()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    tc = TrainConfig(**vars(parser.parse_args(argv)))
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    set_seed(tc.seed)
    work = Path(tc.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"

    m30k_train = multi30k.read_split(tc.multi30k, "train")
    val = multi30k.read_split(tc.multi30k, "val")
    ding_train, ding_test = ding.split_test(ding.read_pairs(tc.ding, verbose=True))
    (work / "ding_test.json").write_text(json.dumps(ding_test, ensure_ascii=False, indent=0))
    print(f"multi30k train {len(m30k_train)} pairs, val {len(val)}; ding train {len(ding_train)}, "
          f"ding test {len(ding_test)}", file=sys.stderr)

    if not (tok_dir / "vocab.json").exists():
        rng = random.Random(tc.seed)
        texts = [s for p in m30k_train for s in p] + [s for p in rng.sample(ding_train, 100_000) for s in p]
        write_tokenizer(texts, tok_dir, tc.vocab_size)
    tok = MarianTokenizer(tok_dir)

    m30k_examples = encode(tok, both_directions(m30k_train))
    ding_examples = encode(tok, both_directions(ding_train))
    val_examples = encode(tok, both_directions(val))
    n_ding = len(ding_train)

    model = build_model(tc, tok.vocab)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters; {json.dumps(asdict(tc))}", file=sys.stderr)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.9, 0.98), eps=1e-9)
    state_file = work / "state.pt"
    epoch0, step, log = 0, 0, []
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        epoch0, step = int(state["epoch"]), int(state["step"])
        log = json.loads((work / "log.json").read_text())
        print(f"resumed after epoch {epoch0}, step {step}", file=sys.stderr)

    started = time.time()
    model.train()
    for epoch in range(epoch0, tc.epochs):
        rng = random.Random(tc.seed * 1000 + epoch)
        examples = list(m30k_examples)
        if epoch < tc.epochs - tc.multi30k_only_last:
            picks = rng.sample(range(n_ding), min(tc.ding_per_epoch, n_ding))
            examples += [ding_examples[i] for i in picks] + [ding_examples[n_ding + i] for i in picks]
        plan = batches(examples, tc.batch_tokens, rng)
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", mininterval=10, file=sys.stderr)
        t0, tokens, total = time.time(), 0, 0.0
        for b in bar:
            step += 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tc)
            loss, n = loss_fn(model, collate(b, model.cfg.pad_token_id, model.cfg.decoder_start_token_id),
                              tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tokens += n
            total += loss.item()
            bar.set_postfix(loss=f"{total / tokens:.3f}", tok_s=f"{tokens / (time.time() - t0):.0f}", refresh=False)
        elapsed = time.time() - t0
        record = {"epoch": epoch + 1, "step": step, "train_loss": total / tokens, "target_tokens": tokens,
                  "seconds": elapsed, "target_tokens_per_s": tokens / elapsed,
                  "dev_loss": dev_loss(model, val_examples, tc)}
        record["dev_chrf"] = dev_chrf(model, tok, val, tc.dev_chrf_sentences)
        log.append(record)
        print(json.dumps(record), file=sys.stderr)
        torch.save({"model": model.state_dict()}, work / f"epoch{epoch + 1:03d}.pt")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1, "step": step},
                   state_file)
        (work / "log.json").write_text(json.dumps(log, indent=1))
        if tc.max_hours and time.time() - started > tc.max_hours * 3600:
            print("time budget reached", file=sys.stderr)
            break
    export(model, tok_dir, work, tc)


def export(model: Transformer, tok_dir: Path, work: Path, tc: TrainConfig) -> None:
    last = sorted(work.glob("epoch*.pt"))[-tc.average_last :]
    model.load_state_dict(average(last))
    model.eval()
    print(f"averaged {[p.name for p in last]}", file=sys.stderr)
    tok = MarianTokenizer(tok_dir)
    gen = GenerationSettings(beam_size=4, max_length=255, banned_ids=(tok.pad_id,))
    save_model(model, tc.out, tokenizer_dir=tok_dir, generation=gen, dtype=torch.float16)
    print(f"exported to {tc.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
