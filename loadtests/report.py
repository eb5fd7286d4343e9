"""The report of a load run: plots and a markdown summary from Locust's CSV files.

    python -m loadtests.report REPORT_DIR [--prefix locust]   # (re)build the plots and summary.md

Reads <prefix>_stats.csv (the whole run, per request type), <prefix>_stats_history.csv (one row a
second per type, written with --csv-full-history: percentiles over the last ~10 s) and, when there,
<prefix>_slo.json (the verdict of the locustfile's SLO gate) and run.json (what loadtests.run
knew about the run). Writes:

- over_time.png: users and throughput, p50/p99 latency, failures, over the run;
- vs_users.png: throughput, latency and failure ratio of each plateau of constant users;
- summary.md: the verdict, the per-type table, every plateau with its SLO verdict and the peak
  sustained throughput at the SLO: the most requests/s of a plateau in which the SLO held
  throughout (failure ratio, and every type's 10-s p50/p99 at every second of it).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from loadtests.slo import SLO, TypeStats, Verdict

TRANSLATING = ("phrase", "sentence", "list", "document", "libre")  # requests that reach a model
TOTAL = "Aggregated"
MIN_WINDOW_S = 10  # shorter plateaus (a ramp) are not judged
SETTLE_S = 5  # the first seconds of a plateau (users still starting) do not count to its throughput
PERCENTILE_WINDOW_S = 10  # Locust's "current" percentiles cover the last ~10 s


@dataclass(frozen=True)
class Sample:
    """One row of the stats history: one request type (or the total) at one second."""

    t: int
    users: int
    name: str
    rps: float
    fail_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    failures: int


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # "N/A"
    return number if number > 0 else None  # 0: no request in the percentile window


def read_history(path: Path) -> list[Sample]:
    with open(path, newline="") as f:
        return [Sample(int(r["Timestamp"]), int(r["User Count"]), r["Name"], float(r["Requests/s"] or 0),
                       float(r["Failures/s"] or 0), _number(r["50%"]), _number(r["99%"]),
                       int(r["Total Request Count"]), int(r["Total Failure Count"]))
                for r in csv.DictReader(f)]


def read_stats(path: Path) -> list[TypeStats]:
    """Whole-run stats per request type; the total last (name "Aggregated")."""
    by_name: dict[str, TypeStats] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            name = r["Name"]
            requests, failures = int(r["Request Count"]), int(r["Failure Count"])
            if name in by_name:  # the same name under two methods: keep the busier one's percentiles
                prev = by_name[name]
                r_p50, r_p99 = (prev.p50_ms, prev.p99_ms) if prev.requests >= requests else (
                    _number(r["50%"]), _number(r["99%"]))
                by_name[name] = TypeStats(name, prev.requests + requests, prev.failures + failures, r_p50, r_p99)
            else:
                by_name[name] = TypeStats(name, requests, failures, _number(r["50%"]), _number(r["99%"]))
    total = by_name.pop(TOTAL, TypeStats(TOTAL, 0, 0, None, None))
    return [*by_name.values(), total]


@dataclass(frozen=True)
class Window:
    """A plateau of constant users, without its first seconds, judged against the SLO."""

    start: int  # seconds since the run began
    end: int
    users: int
    requests: int
    failures: int
    translations: int  # requests that reach a model (not invalid, not /languages)
    types: tuple[TypeStats, ...]
    verdict: Verdict

    @property
    def seconds(self) -> int:
        return max(1, self.end - self.start)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def translation_rps(self) -> float:
        return self.translations / self.seconds

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def worst_p99(self) -> tuple[str, float] | None:
        judged = [(t.name, t.p99_ms) for t in self.types if t.p99_ms is not None]
        return max(judged, key=lambda x: x[1]) if judged else None


def windows(samples: list[Sample], slo: SLO, min_seconds: int = MIN_WINDOW_S, settle_s: int = SETTLE_S
            ) -> list[Window]:
    totals = sorted((s for s in samples if s.name == TOTAL), key=lambda s: s.t)
    if not totals:
        return []
    t_first = totals[0].t
    plateaus: list[list[Sample]] = []
    for s in totals:
        if plateaus and plateaus[-1][-1].users == s.users:
            plateaus[-1].append(s)
        else:
            plateaus.append([s])
    by_type: dict[str, list[Sample]] = {}
    for s in samples:
        if s.name != TOTAL:
            by_type.setdefault(s.name, []).append(s)

    def count_at(rows: list[Sample], t: int) -> tuple[int, int]:
        before = [r for r in rows if r.t <= t]
        return (before[-1].requests, before[-1].failures) if before else (0, 0)

    out = []
    for plateau in plateaus:
        users, t0, t1 = plateau[0].users, plateau[0].t, plateau[-1].t
        if users == 0 or t1 - t0 < min_seconds:
            continue
        start = next(s for s in plateau if s.t >= min(t0 + settle_s, t1))
        # Percentiles from the moment their 10-s window lies inside the plateau (or its last second).
        lat_from = t0 + PERCENTILE_WINDOW_S if t1 - t0 >= PERCENTILE_WINDOW_S else t1
        types, translations = [], 0
        for name, rows in sorted(by_type.items()):
            r0, f0 = count_at(rows, start.t)
            r1, f1 = count_at(rows, t1)
            if r1 - r0 <= 0:
                continue
            inside = [r for r in rows if lat_from <= r.t <= t1]
            p50 = [r.p50_ms for r in inside if r.p50_ms is not None]
            p99 = [r.p99_ms for r in inside if r.p99_ms is not None]
            types.append(TypeStats(name, r1 - r0, f1 - f0, max(p50) if p50 else None, max(p99) if p99 else None))
            if name in TRANSLATING:
                translations += r1 - r0 - (f1 - f0)
        requests, failures = plateau[-1].requests - start.requests, plateau[-1].failures - start.failures
        verdict = slo.check(types, TypeStats(TOTAL, requests, failures, None, None))
        out.append(Window(start.t - t_first, t1 - t_first, users, requests, failures, translations, tuple(types),
                          verdict))
    return out


def peak_at_slo(ws: list[Window]) -> Window | None:
    held = [w for w in ws if w.verdict.ok]
    return max(held, key=lambda w: w.rps) if held else None


# -- plots ---------------------------------------------------------------------------------------------
def plot(samples: list[Sample], ws: list[Window], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = sorted((s for s in samples if s.name == TOTAL), key=lambda s: s.t)
    if not totals:
        return []
    t_first = totals[0].t
    names = sorted({s.name for s in samples if s.name != TOTAL})
    files = []

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    t = [s.t - t_first for s in totals]
    ax1.plot(t, [s.rps for s in totals], label="requests/s", color="tab:blue")
    ax1.set_ylabel("requests/s")
    users_ax = ax1.twinx()
    users_ax.step(t, [s.users for s in totals], where="post", color="tab:gray", linestyle="--", label="users")
    users_ax.set_ylabel("users")
    ax1.legend(loc="upper left")
    users_ax.legend(loc="upper right")
    ax1.set_title("throughput (Locust's rate over the last ~10 s)")
    for name in names:
        rows = [s for s in samples if s.name == name and s.p99_ms is not None]
        if rows:
            ax2.plot([s.t - t_first for s in rows], [s.p99_ms for s in rows], label=f"{name} p99", linewidth=1)
    ax2.plot(t, [s.p50_ms for s in totals], label="all p50", color="black", linewidth=2)
    ax2.plot(t, [s.p99_ms for s in totals], label="all p99", color="black", linestyle="--", linewidth=2)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (10-s window)")
    ax2.set_title("latency: p50/p99 of all requests, p99 per type")
    ax2.legend(fontsize=7, ncol=3)
    ax3.plot(t, [s.fail_per_s for s in totals], label="all", color="tab:red", linewidth=2)
    for name in names:
        rows = [s for s in samples if s.name == name]
        if any(s.failures for s in rows):
            ax3.plot([s.t - t_first for s in rows], [s.fail_per_s for s in rows], label=name, linewidth=1)
    ax3.set_ylabel("failures/s")
    ax3.set_xlabel("seconds since start")
    ax3.set_title("unexpected answers (wrong status, broken body, no answer)")
    ax3.legend(fontsize=7)
    fig.tight_layout()
    files.append(out / "over_time.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    if ws:
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
        users = [w.users for w in ws]
        ok = [w.verdict.ok for w in ws]
        ax1.plot(users, [w.rps for w in ws], marker="o", label="all requests/s")
        ax1.plot(users, [w.translation_rps for w in ws], marker="s", label="translations/s")
        for w in ws:
            if not w.verdict.ok:
                ax1.annotate("SLO broken", (w.users, w.rps), color="tab:red", fontsize=8)
        ax1.set_ylabel("requests/s")
        ax1.set_title("throughput per plateau (SLO held: filled, broken: red X)")
        ax1.scatter([u for u, k in zip(users, ok) if not k], [w.rps for w in ws if not w.verdict.ok],
                    marker="x", color="tab:red", s=80, zorder=3)
        ax1.legend()
        for name in sorted({t.name for w in ws for t in w.types}):
            pts = [(w.users, t) for w in ws for t in w.types if t.name == name and t.p99_ms is not None]
            if pts:
                line = ax2.plot([u for u, _ in pts], [t.p99_ms for _, t in pts], marker="o", label=f"{name} p99")
                ax2.plot([u for u, _ in pts], [t.p50_ms or float("nan") for _, t in pts], marker=".",
                         linestyle=":", color=line[0].get_color(), label=f"{name} p50")
        ax2.set_yscale("log")
        ax2.set_ylabel("ms (worst 10-s window)")
        ax2.set_title("latency per plateau")
        ax2.legend(fontsize=7, ncol=3)
        ax3.plot(users, [w.fail_ratio for w in ws], marker="o", color="tab:red")
        ax3.set_ylabel("failure ratio")
        ax3.set_xlabel("users")
        ax3.set_title("failure ratio per plateau")
        fig.tight_layout()
        files.append(out / "vs_users.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


# -- summary ------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary(out: Path, prefix: str, slo: SLO, title: str = "Load test", context: dict | None = None) -> str:
    """Plots and summary.md for the run whose CSV files are out/<prefix>_*; returns the markdown."""
    history = out / f"{prefix}_stats_history.csv"
    samples = read_history(history) if history.exists() else []
    ws = windows(samples, slo)
    files = plot(samples, ws, out)
    verdict_file = out / f"{prefix}_slo.json"
    gate = json.loads(verdict_file.read_text()) if verdict_file.exists() else None
    stats_file = out / f"{prefix}_stats.csv"
    stats = read_stats(stats_file) if stats_file.exists() else [TypeStats(TOTAL, 0, 0, None, None)]
    whole = slo.check(stats[:-1], stats[-1])

    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Verdict", ""]
    if gate is not None:
        lines.append("SLO **met**." if gate["ok"] else "SLO **not met**:")
        lines += [f"- {b}" for b in gate["breaches"]]
        if gate.get("exceptions"):
            lines.append(f"- the scenario raised {gate['exceptions']} distinct exception(s)")
    else:
        lines.append("No verdict from the run (no _slo.json); the whole-run check below is recomputed from the CSV.")
    peak = peak_at_slo(ws)
    lines += ["", "## Peak sustained throughput at the SLO", ""]
    if peak is not None:
        lines.append(f"**{peak.rps:.1f} requests/s** ({peak.translation_rps:.1f} translations/s) with {peak.users} "
                     f"users, from {peak.start} s to {peak.end} s: the busiest plateau in which the SLO held "
                     "throughout.")
    elif ws:
        lines.append("None: the SLO broke in every plateau.")
    else:
        lines.append(f"No plateau of at least {MIN_WINDOW_S} s (or no history): nothing to judge.")
    lines += ["", "## Per request type, whole run", "",
              "| type | requests | failures | p50 ms | p50 limit | p99 ms | p99 limit | SLO |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in whole.rows:
        lines.append(f"| {r['name']} | {r['requests']} | {r['failures']} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p50_limit_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['p99_limit_ms'])} | "
                     f"{'ok' if r['ok'] else 'broken'} |")
    lines += ["", f"Failure ratio limit: {slo.max_fail_ratio} of all requests. Invalid requests count as "
              "successes when they get the status the API documents for them.", "",
              "## Plateaus", "",
              "| users | from s | to s | requests/s | translations/s | failure ratio | worst p99 ms | SLO |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for w in ws:
        worst = w.worst_p99()
        lines.append(f"| {w.users} | {w.start} | {w.end} | {w.rps:.1f} | {w.translation_rps:.1f} | "
                     f"{w.fail_ratio:.4f} | {f'{worst[1]:.0f} ({worst[0]})' if worst else '-'} | "
                     f"{'held' if w.verdict.ok else 'broken: ' + '; '.join(w.verdict.breaches)} |")
    lines += ["", "## Files", ""]
    lines += [f"- [{f.name}]({f.name})" for f in files]
    for suffix in (".html", "_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv", "_slo.json"):
        if (out / f"{prefix}{suffix}").exists():
            lines.append(f"- [{prefix}{suffix}]({prefix}{suffix})")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def slo_of_run(out: Path, prefix: str) -> SLO | None:
    """The limits a run was judged by, from its _slo.json."""
    file = out / f"{prefix}_slo.json"
    if not file.exists():
        return None
    limits = json.loads(file.read_text())["slo"]
    return SLO(limits["max_fail_ratio"], limits["p50_ms"], limits["p99_ms"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the folder with Locust's CSV files")
    parser.add_argument("--prefix", default="locust", help="CSV prefix inside the folder (default: locust)")
    args = parser.parse_args(argv)
    if not (args.dir / f"{args.prefix}_stats.csv").exists():
        raise SystemExit(f"no {args.prefix}_stats.csv in {args.dir}")
    slo = slo_of_run(args.dir, args.prefix) or SLO()
    run_file = args.dir / "run.json"  # what loadtests.run knew about the run
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    print(summary(args.dir, args.prefix, slo, title=run.get("title", "Load test"), context=run.get("context")))


if __name__ == "__main__":
    main()
