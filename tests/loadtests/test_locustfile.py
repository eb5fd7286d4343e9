"""The locustfile's guards, without a service: runs stop by themselves, load stays on this machine,
and a service that does not answer fails the SLO gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def _locust(*args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "--loglevel", "WARNING", *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOADTEST_", "LOCUST_"))}
    return subprocess.run(cmd, cwd=ROOT, env={**environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
                          text=True, timeout=120)


def test_a_run_without_run_time_stops_by_itself_and_no_answers_break_the_slo(tmp_path):
    nobody = f"http://{HOST}:{free_port()}"  # a free port: every request is refused
    started = time.monotonic()
    run = _locust("--host", nobody, "-u", "2", "-r", "2", "--csv", str(tmp_path / "x"),
                  LOADTEST_RUN_TIME_DEFAULT="4")
    assert time.monotonic() - started < 60
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no --run-time given: stopping after 4 s" in run.stderr
    assert "SLO BREACH: failure ratio 1.0000" in run.stdout
    verdict = json.loads((tmp_path / "x_slo.json").read_text())
    assert not verdict["ok"] and verdict["slo"]["max_fail_ratio"] == 0.01


def test_load_goes_to_this_machine_only():
    run = _locust("--host", "http://192.0.2.1:8000", "-u", "1", "-t", "2s")  # TEST-NET-1: never contacted
    assert run.returncode != 0
    assert "load only goes to a loopback host" in run.stderr + run.stdout


def test_an_unknown_shape_is_refused():
    run = _locust("--host", f"http://{HOST}:1", "-u", "1", "-t", "2s", LOADTEST_SHAPE="sawtooth")
    assert run.returncode != 0 and "LOADTEST_SHAPE must be one of" in run.stderr + run.stdout
