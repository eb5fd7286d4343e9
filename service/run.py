"""`make serve`: start Ray on 127.0.0.1 and serve the app on http://127.0.0.1:8000 until Ctrl-C.

    python -m service.run [--port 8000] [--metrics-port 8080] [--model DIR --pairs en-de,de-en]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading

from model.translator import EMBEDDED_MODEL

HOST = "127.0.0.1"
RAY_CHECK_S = 2.0  # how often the driver checks that Ray is still there
RAY_MISSES = 3  # consecutive failed checks before it gives up


def fast_path_environment(port: int, replicas: int) -> dict[str, str]:
    """Ray Serve's throughput settings (read by every Ray process at import, so set before Ray starts):
    the model replica serves HTTP itself on `port` (direct ingress: no proxy hop; one port per
    replica from there on), user code on the replica's own event loop, request logs buffered and
    not copied to stderr, gRPC between replicas. Serve's proxy still runs (on another port) and
    spreads requests over all replicas. Values already in the environment win."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + replicas),  # the end is not part of the range
        # A port is held back from reuse (default 150 s) for load balancers to drop it; a replica that
        # restarts here must get its port back at once, or clients of that port wait.
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        # Idle cost: the controller's loop runs 2x a second (not 10x), replicas hand Serve's own metrics
        # over once a second (not 10x); neither is on a request's path.
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
        # Ray's default keeps a stopping replica's port open 30 s for a load balancer to notice;
        # locally nothing balances, and Ctrl-C should not wait for it.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }


def reachable(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_stop(stop: threading.Event, gcs_address: str) -> None:
    """Block until Ctrl-C / SIGTERM, or exit if Ray goes away underneath (`ray stop`): the driver
    would otherwise spin at a full core for a minute trying to reach the GCS, then die with a
    message about its RPC client. An address this cannot parse leaves only the signals."""
    host, _, port = gcs_address.rpartition(":")
    if not host or not port.isdigit():
        stop.wait()
        return
    host = host.strip("[]")  # an IPv6 address comes as [addr]:port
    misses = 0
    while not stop.wait(RAY_CHECK_S):
        misses = 0 if reachable(host, int(port)) else misses + 1
        if misses >= RAY_MISSES:
            print(f"mt-serve: Ray is gone (its GCS at {gcs_address} refuses connections; was `ray stop` run?); "
                  "exiting", file=sys.stderr, flush=True)
            os._exit(1)  # serve.shutdown() and ray.shutdown() would wait on the dead GCS


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus export port")
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--pairs", default=None, help="comma-separated, e.g. en-de,de-en (default: from the model)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per model replica (0: all cores)")
    args = parser.parse_args(argv)
    for key, value in fast_path_environment(args.port, args.replicas).items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app

    ray.init(_node_ip_address=HOST, include_dashboard=False, _metrics_export_port=args.metrics_port,
             configure_logging=False)
    proxy_port = free_port()
    serve.start(http_options={"host": HOST, "port": proxy_port})
    spec = ModelSpec(name="embedded" if args.model == str(EMBEDDED_MODEL) else "custom", path=args.model,
                     pairs=args.pairs.split(",") if args.pairs else None, num_replicas=args.replicas,
                     threads=args.threads)
    serve.run(build_app(AppArgs(models=[spec])), name="mt", route_prefix="/")
    url = f"http://{HOST}:{args.port}"
    print(f"\nmt-serve is up: {url}  (API docs: {url}/docs, metrics: http://{HOST}:{args.metrics_port}/metrics)")
    if args.replicas > 1:
        print(f"replicas listen on ports {args.port}-{args.port + args.replicas - 1}; Serve's proxy spreads "
              f"requests over all of them at http://{HOST}:{proxy_port}")
    print(f"try:\n  curl -s {url}/v1/translate -H 'Content-Type: application/json' "
          "-d '{\"text\": \"A dog runs across the beach.\", \"source_lang\": \"en\", \"target_lang\": \"de\"}'\n")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    wait_for_stop(stop, ray.get_runtime_context().gcs_address)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
