import time

import httpx


def test_probe(service):
    with httpx.Client(base_url=service.url, timeout=60) as c:
        for _ in range(3):
            c.post("/v1/translate", json={"text": "A dog.", "source_lang": "en", "target_lang": "de"})
    time.sleep(8)
    text = httpx.get(service.metrics_url).text
    names = sorted({ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln.startswith("ray_serve_") or ln.startswith("ray_mt_")})
    print("\nPROBE", [n for n in names if n.startswith(("ray_serve_deployment_q", "ray_serve_deployment_rep", "ray_serve_autoscaling_t"))])
    print("PROBE", [ln for ln in text.splitlines() if ln.startswith("ray_serve_deployment_replica_healthy")][:3])
