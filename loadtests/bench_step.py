"""The cost of one decoding step, ours against CTranslate2, by the number of rows still running.

    python -m loadtests.bench_step [--weights embedded opus] [--rows 1 4 16 64] [--beams 1]
                                   [--lengths 8 40] [--rounds 5] [--threads 2]

Every engine translates the same batch of `rows` sentences twice, with the output length forced
to each of `--lengths`; the difference in time over the difference in length is the cost of a
step at that many rows, without the encoder or the set-up. Where a batch of real sentences
spends its time follows: a batch of 16 spends half its steps with four rows or fewer left, so
an engine with a cheap step at few rows wins there even if it is slower at 16 (what the README's
table shows on the small embedded model). Engines run as in bench_engine: each in its own
process, interleaved round by round. A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

from loadtests.bench_engine import (
    Engine,
    Workload,
    convert_ct2,
    ctranslate2_engine,
    embedded_workload,
    measure,
    opus_workload,
    ours,
)
from model.translator import EMBEDDED_MODEL


def step_costs(w: Workload, rows: int, beam: int, lengths: tuple[int, int], rounds: int, threads: int,
               ct2_dir: Path) -> dict[str, float]:
    """Milliseconds per decoding step at `rows` rows, per engine."""
    tok_vocab = json.loads((w.model_dir / "vocab.json").read_text())
    seconds: dict[str, list[float]] = {}
    for length in lengths:
        forced = replace(w, forced_length=length)
        engines: dict[str, Engine] = {
            "ours": partial(ours, w.model_dir, "cpu", False, forced, beam),
            "ct2-float32": partial(ctranslate2_engine, ct2_dir, tok_vocab, "cpu", "float32", threads, forced, beam),
        }
        for name, result in measure(engines, forced, rows, rounds, rows, threads).items():
            seconds.setdefault(name, []).append(statistics.median(result.seconds))
    return {name: 1000 * (t[1] - t[0]) / (lengths[1] - lengths[0]) for name, t in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--weights", nargs="+", default=["embedded", "opus"], choices=["embedded", "opus"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--beams", type=int, nargs="+", default=[1])
    parser.add_argument("--lengths", type=int, nargs=2, default=[8, 40])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="where converted models go (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-step-"))
    for weights in args.weights:
        w = embedded_workload(Path(args.model), 64) if weights == "embedded" else opus_workload(work, 64, 24)
        ct2_dir = convert_ct2(w.model_dir, work / f"{weights}-ct2", None)
        for beam in args.beams:
            print(f"\n[{weights}] beam={beam} threads={args.threads}: ms per decoding step "
                  f"(forced lengths {args.lengths[0]} and {args.lengths[1]}, median of {args.rounds} rounds)")
            print(f"  {'rows':>5} {'ours':>8} {'ct2-float32':>12} {'speed ours/ct2':>15}")
            for rows in args.rows:
                cost = step_costs(w, rows, beam, tuple(args.lengths), args.rounds, args.threads, ct2_dir)
                print(f"  {rows:5d} {cost['ours']:8.3f} {cost['ct2-float32']:12.3f} "
                      f"{cost['ct2-float32'] / cost['ours']:15.2f}", flush=True)


if __name__ == "__main__":
    main()
