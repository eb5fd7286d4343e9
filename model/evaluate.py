"""Score a model on held-out sets with sacreBLEU (BLEU and chrF, detokenized, cased; with signatures).

    python -m model.evaluate [--model DIR] [--multi30k DIR] [--ding-test runs/embedded/ding_test.json]
                             [--beams 1 4] [--compare-transformers] [--json out.json]

Both directions of a two-way model; Multi30k test_2016_flickr, test_2017_flickr,
test_2017_mscoco and the Ding held-out sentences. `--compare-transformers` also decodes greedily
with transformers' MarianMTModel on the same weights and reports how often the outputs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import sacrebleu
import torch

from model.data import multi30k
from model.translator import EMBEDDED_MODEL, Translator

TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


def score(hyps: list[str], refs: list[str]) -> dict[str, object]:
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2), "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def load_sets(multi30k_dir: str | None, ding_test: str | None) -> dict[str, list[tuple[str, str]]]:
    sets: dict[str, list[tuple[str, str]]] = {}
    if multi30k_dir and Path(multi30k_dir).exists():
        for name in TEST_SETS:
            sets[f"multi30k/{name}"] = multi30k.read_split(multi30k_dir, name)
    if ding_test and Path(ding_test).exists():
        sets["ding/held_out"] = [tuple(p) for p in json.loads(Path(ding_test).read_text())]
    return sets


def transformers_agreement(path: Path, translator: Translator, sources: list[str], target: str,
                           ours: list[str]) -> float:
    """Share of sentences where transformers' greedy output equals ours (same weights, fp32)."""
    from transformers import MarianMTModel

    hf = MarianMTModel.from_pretrained(path, dtype=torch.float32).eval()
    tok = translator.tokenizer
    same = 0
    for i in range(0, len(sources), 32):
        ids = tok.encode_batch(sources[i : i + 32], target_lang=target)
        src = torch.full((len(ids), max(map(len, ids))), tok.pad_id)
        for r, x in enumerate(ids):
            src[r, : len(x)] = torch.tensor(x)
        with torch.no_grad():
            out = hf.generate(input_ids=src, attention_mask=(src != tok.pad_id).long(), num_beams=1,
                              do_sample=False)
        texts = [tok.decode(row[1:]) for row in out.tolist()]
        same += sum(a == b for a, b in zip(texts, ours[i : i + 32]))
    return same / len(sources)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--multi30k", default="../shared/data/multi30k")
    parser.add_argument("--ding-test", default="runs/embedded/ding_test.json")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sets", nargs="*", default=None, help="only these sets (names as printed)")
    parser.add_argument("--limit", type=int, default=0, help="first N sentences of each set (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compare-transformers", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--save-hyps", default=None, help="write each set's translations to this folder")
    args = parser.parse_args(argv)

    translator = Translator(args.model, device="cpu")
    sets = load_sets(args.multi30k, args.ding_test)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}
    results = []
    print(f"{'set':28} {'dir':6} {'beam':>4} {'BLEU':>6} {'chrF':>6} {'sec':>6}")
    for name, pairs in sets.items():
        pairs = pairs[: args.limit] if args.limit else pairs
        en, de = [p[0] for p in pairs], [p[1] for p in pairs]
        for direction, src, ref, target in (("en-de", en, de, "de"), ("de-en", de, en, "en")):
            for beam in args.beams:
                t0 = time.perf_counter()
                hyps = [r.text for r in translator.translate_batch(src, target_lang=target, beam_size=beam,
                                                                   max_batch_size=args.batch_size)]
                if args.save_hyps:
                    out = Path(args.save_hyps) / f"{name.replace('/', '_')}.{direction}.beam{beam}.txt"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text("".join(h + "\n" for h in hyps))
                row = {"set": name, "direction": direction, "beam": beam, "sentences": len(src),
                       "seconds": round(time.perf_counter() - t0, 1), **score(hyps, ref)}
                if args.compare_transformers and beam == 1:
                    row["transformers_greedy_agreement"] = transformers_agreement(
                        Path(args.model), translator, src, target, hyps)
                results.append(row)
                print(f"{name:28} {direction:6} {beam:4d} {row['bleu']:6.2f} {row['chrf']:6.2f} "
                      f"{row['seconds']:6.1f}" + (f"  agree {row['transformers_greedy_agreement']:.3f}"
                                                  if "transformers_greedy_agreement" in row else ""))
                sys.stdout.flush()
    if results:
        print(f"signatures: {results[0]['bleu_signature']} | {results[0]['chrf_signature']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
