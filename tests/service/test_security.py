"""API keys and rate limits, on a second application of the same Serve instance."""

from __future__ import annotations

import glob

import httpx
import pytest

from service.api import app as fastapi_app

KEY = "k3y-Of-The-Test-0123456789abcdef"
OPEN = {"/healthz", "/readyz", "/explorer"}  # the explorer page holds no data; its calls need the key


@pytest.fixture(scope="module")
def secure(service, tmp_path_factory):
    from ray import serve

    from service.app import AppArgs, ModelSpec, build_app

    keys = tmp_path_factory.mktemp("secret") / "keys"
    keys.write_text(f"other-key\n{KEY}\n")
    spec = ModelSpec(name="tiny", path=str(service.model_dir), pairs=["en-de", "de-en"], num_cpus=0.5, threads=1)
    serve.run(build_app(AppArgs(models=[spec], api_keys_file=str(keys), rate_limit_per_minute=12)),
              name="secure", route_prefix="/secure")
    yield service.url + "/secure"
    serve.delete("secure")


def routes(router=fastapi_app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, included routers too (Serve includes ours)."""
    out = []
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out += routes(inner)
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                out.append((method, route.path))
    return out


def test_every_route_but_health_and_explorer_page_needs_a_key(secure):
    seen = set()
    with httpx.Client(timeout=30) as c:
        for method, path in routes():
            url = secure + path.replace("{", "").replace("}", "")
            r = c.request(method, url, json={})
            seen.add(path)
            if path in OPEN:
                assert r.status_code == 200, (method, path, r.status_code)
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
            wrong = c.request(method, url, json={}, headers={"Authorization": "Bearer not-the-key"})
            assert wrong.status_code == (200 if path in OPEN else 401)
    assert {"/v1/translate", "/translate", "/languages", "/v1/models", "/docs", "/openapi.json"} <= seen


def test_a_valid_key_is_let_in(secure):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=60, headers=headers) as c:
        r = c.post(secure + "/v1/translate", json={"text": "A dog.", "source_lang": "en", "target_lang": "de"})
        assert r.status_code == 200
        assert c.get(secure + "/docs").status_code == 200
        assert c.get(secure + "/v1/models").status_code == 200


def test_rate_limit_counts_texts_and_says_when_to_retry(secure):
    headers = {"Authorization": "Bearer other-key"}
    body = {"source_lang": "en", "target_lang": "de", "beam_size": 1, "max_length": 2}
    with httpx.Client(timeout=60, headers=headers) as c:
        assert c.post(secure + "/v1/translate", json={"text": ["a"] * 10, **body}).status_code == 200
        r = c.post(secure + "/v1/translate", json={"text": ["a"] * 5, **body})  # 15 > 12 per minute
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limited"
    # Another key has its own budget.
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.post(secure + "/v1/translate", json={"text": ["a"] * 3, **body}).status_code == 200


def test_keys_never_reach_the_logs(secure):
    with httpx.Client(timeout=30) as c:
        c.get(secure + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        c.get(secure + "/v1/models", headers={"Authorization": "Bearer wrong-key-visible-if-logged"})
    for path in glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True):
        try:
            with open(path, errors="ignore") as f:
                text = f.read()
        except (IsADirectoryError, PermissionError):
            continue
        assert KEY not in text, path
        assert "wrong-key-visible-if-logged" not in text, path
