"""`make loadtest`: start the service, load it with Locust in one shape, stop it, write a report.

    python -m loadtests.run --shape step|steady|spike [--duration S] [--users N] [--model DIR]
                            [--pairs en-de,de-en] [--report-dir DIR] [--url http://127.0.0.1:P]
                            [--slo-fail-ratio R] [--slo-p50 type=ms,...] [--slo-p99 type=ms,...] [--slo-scale X]

The service runs as a subprocess (`python -m service.run`: Ray and Serve on 127.0.0.1, free ports)
until GET /readyz answers 200; `--url` loads a service that is already running on this machine
instead. Locust runs headless as a second subprocess with loadtests/locustfile.py; both are
bounded in time and stopped at the end. The report folder (default reports/<shape>-<timestamp>/)
gets Locust's CSV files and HTML page, plots and summary.md (see loadtests/report.py). The exit
status is Locust's: 0 when the SLO held over the whole run, 1 when it did not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from loadtests import shapes
from loadtests.report import summary
from loadtests.slo import SLO

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PREFIX = "locust"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Service:
    """`python -m service.run` in its own process group, so that Ray's processes stop with it."""

    def __init__(self, model: str, pairs: str | None, log: Path, threads: int, replicas: int) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "service.run", "--port", str(self.port), "--metrics-port",
               str(self.metrics_port), "--model", model, "--threads", str(threads), "--replicas", str(replicas)]
        if pairs:
            cmd += ["--pairs", pairs]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.command = cmd
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited with {self.proc.returncode} before it was ready: "
                                 f"see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"the service was not ready after {timeout:.0f} s: see {self.log.name}")

    def stop(self, grace: float = 60) -> None:
        """SIGTERM (service.run shuts Serve and Ray down), then SIGKILL to the whole group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever Ray left in the group
        self.proc.wait()
        self.log.close()


def locust_command(url: str, shape: str, users: int, duration: int, prefix: Path, slo_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
            "-u", str(users), "-r", str(max(1, users // 5)), "-t", f"{duration}s", "--stop-timeout", "10",
            "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html", "--only-summary",
            "--loglevel", "WARNING", *slo_args]


def check_loopback(url: str) -> str:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be a service on this machine (127.0.0.1). Given: {url}")
    return url.rstrip("/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default="step")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds of load (default: steady 60, step 180, spike 90)")
    parser.add_argument("--users", type=int, default=None, help="peak users (default: steady 8, step 24, spike 24)")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    parser.add_argument("--pairs", default=None, help="comma-separated pairs (default: from the model)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per replica (0: all cores)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--url", default=None, help="load this running service (on 127.0.0.1) instead of starting one")
    parser.add_argument("--report-dir", type=Path, default=None, help="default: reports/<shape>-<timestamp>/")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for /readyz")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--slo-fail-ratio", type=float, default=None)
    parser.add_argument("--slo-p50", default="", help='"type=ms,..." over the defaults (loadtests/slo.py)')
    parser.add_argument("--slo-p99", default="", help='"type=ms,..." over the defaults (loadtests/slo.py)')
    parser.add_argument("--slo-scale", type=float, default=1.0, help="multiply every latency limit")
    parser.add_argument("--stop-service-after", type=float, default=None, metavar="S",
                        help="fault injection: stop the service S seconds into the load (the SLO gate must fail)")
    args = parser.parse_args(argv)

    default_users, default_duration = shapes.DEFAULTS[args.shape]
    users, duration = args.users or default_users, args.duration or default_duration
    slo = SLO.from_options(args.slo_fail_ratio, args.slo_p50, args.slo_p99, args.slo_scale)  # fail fast
    slo_args = [f"--slo-scale={args.slo_scale}"]
    slo_args += [f"--slo-fail-ratio={args.slo_fail_ratio}"] if args.slo_fail_ratio is not None else []
    slo_args += [f"--slo-p50={args.slo_p50}"] if args.slo_p50 else []
    slo_args += [f"--slo-p99={args.slo_p99}"] if args.slo_p99 else []
    out = args.report_dir or ROOT / "reports" / f"{args.shape}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()

    service = None
    if args.url:
        url = check_loopback(args.url)
        model = "(a running service)"
    else:
        from model.translator import EMBEDDED_MODEL

        model = args.model or str(EMBEDDED_MODEL)
        if not (Path(model) / "config.json").exists():
            raise SystemExit(f"no model at {model} (the embedded model may not be trained yet): pass --model DIR")
        print(f"starting the service on {model} ...", flush=True)
        started = time.monotonic()
        service = Service(model, args.pairs, out / "service.log", args.threads, args.replicas)
        url = service.url
    try:
        if service:
            service.wait_ready(args.ready_timeout)
            print(f"service ready at {url} after {time.monotonic() - started:.0f} s", flush=True)
        cmd = locust_command(url, args.shape, users, duration, out / PREFIX, slo_args)
        env = {**os.environ, "LOADTEST_SHAPE": args.shape, "LOADTEST_SEED": str(args.seed),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        print(f"{args.shape} load: up to {users} users for {duration} s -> {out}", flush=True)
        print("  " + shlex.join(cmd), flush=True)
        locust = subprocess.Popen(cmd, cwd=ROOT, env=env)
        if service and args.stop_service_after is not None:
            time.sleep(args.stop_service_after)
            print(f"fault injection: stopping the service {args.stop_service_after:.0f} s into the load", flush=True)
            service.stop()
        try:
            code = locust.wait(duration + 90)  # the shape and -t stop it; this is the backstop
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait()
            print("Locust did not stop in time: killed", flush=True)
            code = 3
    finally:
        if service:
            service.stop()
    context = {
        "command": "`" + shlex.join(["python", "-m", "loadtests.run", *(argv if argv is not None else sys.argv[1:])])
        + "`",
        "shape": f"{args.shape}, up to {users} users, {duration} s (loadtests/shapes.py)",
        "model": model,
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}; Locust on the same machine",
        "Locust exit status": f"{code} (0: SLO met)",
    }
    (out / "run.json").write_text(json.dumps({"title": f"Load test: {args.shape}", "context": context}, indent=2))
    summary(out, PREFIX, slo, title=f"Load test: {args.shape}", context=context)
    print(f"report: {out / 'summary.md'}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
