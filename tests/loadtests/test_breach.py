"""The SLO gate can fail: a load run whose service is stopped half-way reports failures and exits 1.

The victim is a service of its own: `python -m loadtests.run --model <tiny> --stop-service-after 8`
starts `python -m service.run` (its own Ray cluster on 127.0.0.1, its own ports), loads it with Locust
and stops it (SIGTERM, then the process group) 8 s into the load. The session's `service` fixture is
not touched: a second local Ray cluster on the same machine is independent of the first. This also
runs `make loadtest`'s path end to end: start, readiness, Locust, stop, report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtests.report import read_stats

ROOT = Path(__file__).resolve().parents[2]


def test_service_stopped_mid_run_breaks_the_slo(tiny_model, tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "loadtests.run", "--shape", "steady", "--duration", "20", "--users", "4",
           "--model", str(tiny_model), "--threads", "1", "--report-dir", str(out), "--stop-service-after", "8",
           "--ready-timeout", "240"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 1, log
    assert "SLO NOT met" in run.stdout, log
    verdict = json.loads((out / "locust_slo.json").read_text())
    assert not verdict["ok"] and verdict["breaches"][0].startswith("failure ratio"), verdict
    total = read_stats(out / "locust_stats.csv")[-1]
    assert total.failures > 0 and total.requests > total.failures  # it served, then it stopped
    failures = (out / "locust_failures.csv").read_text()
    assert "no answer" in failures or "got 5" in failures, failures
    text = (out / "summary.md").read_text()
    assert "SLO **not met**" in text and "failure ratio" in text
    assert (out / "over_time.png").exists() and (out / "service.log").exists()
