"""The SLO check, the load shapes and the report, on made-up numbers (no service, no Locust)."""

from __future__ import annotations

import csv
import json

import pytest

from loadtests import shapes
from loadtests.report import peak_at_slo, read_history, summary, windows
from loadtests.slo import DEFAULT_P99_MS, SLO, TypeStats, parse_limits


def test_slo_passes_and_fails_on_failure_ratio_and_latency():
    slo = SLO(max_fail_ratio=0.01, p50_ms={"sentence": 100}, p99_ms={"sentence": 500})
    good = slo.check([TypeStats("sentence", 200, 1, 80, 450)], TypeStats("Aggregated", 200, 1, 80, 450))
    assert good.ok and good.breaches == []
    failing = slo.check([TypeStats("sentence", 200, 3, 80, 450)], TypeStats("Aggregated", 200, 3, 80, 450))
    assert not failing.ok and failing.breaches[0].startswith("failure ratio 0.0150 > 0.01")
    slow = slo.check([TypeStats("sentence", 200, 0, 120, 600), TypeStats("other", 5, 0, 9999, 9999)],
                     TypeStats("Aggregated", 205, 0, 120, 600))
    assert slow.breaches == ["sentence: p50 120 ms > 100 ms", "sentence: p99 600 ms > 500 ms"]
    assert [r["ok"] for r in slow.rows] == [True, False, True]  # "other" has no limits: shown, not judged
    assert "sentence" in slow.table() and "NO" in slow.table()


def test_a_run_without_requests_fails_and_zero_tolerance_means_zero():
    assert SLO().check([], TypeStats("Aggregated", 0, 0, None, None)).breaches == ["no requests were made"]
    strict = SLO.from_options(fail_ratio=0)
    assert not strict.check([], TypeStats("Aggregated", 1000, 1, 10, 10)).ok
    assert strict.check([], TypeStats("Aggregated", 1000, 0, 10, 10)).ok


def test_limits_from_options():
    slo = SLO.from_options(fail_ratio=0.05, p99="document=20000, phrase=800", scale=2)
    assert slo.max_fail_ratio == 0.05
    assert slo.p99_ms["document"] == 40000 and slo.p99_ms["phrase"] == 1600
    assert slo.p99_ms["sentence"] == 2 * DEFAULT_P99_MS["sentence"]
    assert parse_limits("") == {}
    for bad in ("phrase", "phrase=fast"):
        with pytest.raises(ValueError, match="TYPE=MILLISECONDS"):
            parse_limits(bad)
    with pytest.raises(ValueError, match="slo-scale"):
        SLO.from_options(scale=0)


def test_shapes_scale_to_users_and_run_time_and_end():
    assert [shapes.step(t, 24, 180, steps=6)[0] for t in (0, 29.9, 30, 90, 179.9)] == [4, 4, 8, 16, 24]
    assert shapes.steady(0, 8, 60) == (8, 1.6) and shapes.steady(59, 8, 60)[0] == 8
    assert [shapes.spike(t, 25, 100)[0] for t in (0, 39, 40, 59, 60, 99)] == [5, 5, 25, 25, 5, 5]
    for schedule in shapes.SHAPES.values():
        assert shapes.tick(schedule, 59.9, 10, 60) is not None
        assert shapes.tick(schedule, 60, 10, 60) is None  # every shape stops by itself


HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "66%", "75%", "80%", "90%",
          "95%", "98%", "99%", "99.9%", "99.99%", "100%", "Total Request Count", "Total Failure Count",
          "Total Median Response Time", "Total Average Response Time", "Total Min Response Time",
          "Total Max Response Time", "Total Average Content Size"]


def _history(path, plateaus):
    """plateaus: (users, seconds, sentence requests/s, sentence failures/s, sentence p99 ms)."""
    rows, t, total, fails = [], 1_700_000_000, 0, 0
    for users, seconds, rps, fps, p99 in plateaus:
        for _ in range(seconds):
            t += 1
            total += rps
            fails += fps
            for name, typ in (("sentence", "POST"), ("Aggregated", "")):
                pct = [p99 // 2] + [p99] * 10
                rows.append([t, users, typ, name, rps, fps, *pct, total, fails, p99 // 2, p99 / 2, 1, p99, 100])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


def test_peak_sustained_throughput_is_the_busiest_plateau_where_the_slo_held(tmp_path):
    _history(tmp_path / "locust_stats_history.csv",
             [(2, 20, 4, 0, 300), (4, 20, 8, 0, 900), (6, 20, 12, 0, 3000), (8, 20, 16, 1, 900), (0, 3, 0, 0, 0)])
    slo = SLO(max_fail_ratio=0.01, p50_ms={"sentence": 10_000}, p99_ms={"sentence": 1000})
    ws = windows(read_history(tmp_path / "locust_stats_history.csv"), slo)
    assert [w.users for w in ws] == [2, 4, 6, 8]
    assert [round(w.rps) for w in ws] == [4, 8, 12, 16]
    assert [w.verdict.ok for w in ws] == [True, True, False, False]  # 6: p99 3000 ms; 8: 1 failure in 16
    peak = peak_at_slo(ws)
    assert peak.users == 4 and peak.translation_rps == pytest.approx(8)

    (tmp_path / "locust_slo.json").write_text(json.dumps({"ok": False, "breaches": ["sentence: p99 3000 ms"],
                                                          "rows": [], "slo": slo.as_dict(), "exceptions": 0}))
    text = summary(tmp_path, "locust", slo, title="Load test: step", context={"shape": "step"})
    assert (tmp_path / "summary.md").read_text() == text
    assert "SLO **not met**" in text and "- sentence: p99 3000 ms" in text
    assert "**8.0 requests/s** (8.0 translations/s) with 4 users" in text
    assert "| 6 |" in text and "broken: sentence: p99 3000 ms > 1000 ms" in text
    for png in ("over_time.png", "vs_users.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_without_a_history_says_so(tmp_path):
    text = summary(tmp_path, "locust", SLO())
    assert "nothing to judge" in text and "No verdict from the run" in text
