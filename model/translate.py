"""Command-line translation.

    python -m model.translate [--model DIR] [--target LANG] [--beam N] [--batch-size N]
                              [--device cpu|cuda] [TEXT ...]

Translates the TEXT arguments, or each line of standard input when none are given, and
prints one translation per line, in input order; nothing else goes to stdout.
"""

from __future__ import annotations

import argparse
import sys

import torch

from model.errors import CheckpointError
from model.translator import EMBEDDED_MODEL, Translator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL), help="Marian model directory")
    parser.add_argument("--target", default=None, help="target language of a multilingual model")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow reading a legacy pytorch_model.bin (weights-only unpickler)")
    parser.add_argument("text", nargs="*")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.beam is not None and args.beam < 1:
        parser.error(f"--beam must be >= 1. Given: {args.beam}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1. Given: {args.batch_size}")
    try:
        translator = Translator(args.model, device=args.device, trust_pickle=args.trust_pickle)
        texts = args.text or [line.rstrip("\n") for line in sys.stdin]
        results = translator.translate_batch(texts, target_lang=args.target, beam_size=args.beam,
                                             max_batch_size=args.batch_size) if texts else []
    except (CheckpointError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(r.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
