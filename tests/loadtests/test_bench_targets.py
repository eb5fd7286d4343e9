"""The benchmark's verdict line: the issue's targets, computed from one configuration's rows."""

from __future__ import annotations

from loadtests.bench_engine import targets


def _row(engine: str, tps: float, chrf: float | None = None) -> dict:
    return {"engine": engine, "tokens_per_s": tps, **({"chrf": chrf} if chrf is not None else {})}


def test_targets_met_and_missed():
    rows = [_row("ours", 1000, 57.6), _row("ours-int8", 1500, 58.2), _row("transformers", 499),
            _row("ct2-float32", 1000), _row("ct2-int8", 1600)]
    assert targets(rows) == ["ours/transformers 2.00 (met, >= 2)", "ours/ct2-float32 1.00 (met, >= 1)",
                             "ours-int8/ct2-int8 0.94 (missed, >= 1)", "chrF int8 - fp32 +0.60 (missed, within 0.5)"]


def test_only_engines_that_ran():
    assert targets([_row("ours", 10), _row("ct2-float16", 5)]) == ["ours/ct2-float16 2.00 (met, >= 1)"]
