"""`make serve`'s driver (`python -m service.run`) exits when Ray goes away underneath it.

Before, `ray stop` under a running `make serve` left the driver at a full core for a minute or
more, retrying the dead GCS. The service here is a cluster of its own (its own ports, its own
process group, as loadtests.run starts it); the session's `service` fixture is not touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from loadtests.run import Service


def processes_named(pgid: int, name: str) -> list[int]:
    """Pids in process group `pgid` whose command name is `name`."""
    out = subprocess.run(["pgrep", "-g", str(pgid), "-x", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_driver_exits_when_ray_is_stopped_underneath(tiny_model, tmp_path):
    log = tmp_path / "serve.log"
    service = Service(str(tiny_model), "en-de", log, threads=1, replicas=1)
    try:
        service.wait_ready(240)
        deadline = time.monotonic() + 60  # ready over HTTP a moment before the driver prints this
        while "mt-serve is up" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        gcs = processes_named(os.getpgid(service.proc.pid), "gcs_server")
        assert gcs, "no gcs_server in the service's process group"
        for pid in gcs:
            os.kill(pid, signal.SIGKILL)
        assert service.proc.wait(timeout=30) == 1
        assert "Ray is gone" in log.read_text()
    finally:
        service.stop()
