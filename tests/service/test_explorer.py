"""The attention explorer page (GET /explorer): served as HTML by the real app, and driven in a real
headless Chromium (Debian's, through Playwright) against the real service on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "explorer-test-key"  # the test server has no keys: the page must still send the one typed in
# en->de on the tiny random model: a garbage translation, but one whose words link to several source words,
# some after the emoji (the API's offsets count code points; JavaScript strings count UTF-16 units).
SENTENCE = "🐕 Three dogs run on grass."
MARKUP = '<img src=x onerror=__xss=1><b>hi</b>'

# What the test reads off the canvas itself (not the page's own checksum): a hash of every pixel,
# how many colours, and the colour at the centre of given cells.
CANVAS = """(cells) => {
  const c = document.getElementById("heatmap"), d = c.dataset, dpr = window.devicePixelRatio || 1;
  const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let h = 0x811c9dc5;
  const colours = new Set();
  for (let i = 0; i < px.length; i++) {
    h ^= px[i]; h = Math.imul(h, 0x01000193);
    if (i % 4 === 0) colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
  }
  const at = ([r, col]) => {
    const x = Math.round((Number(d.left) + (col + 0.5) * Number(d.cell)) * dpr);
    const y = Math.round((Number(d.top) + (r + 0.5) * Number(d.cell)) * dpr);
    const i = (y * c.width + x) * 4;
    return [px[i], px[i + 1], px[i + 2]];
  };
  return {hash: (h >>> 0).toString(16), colours: colours.size, rows: Number(d.rows), cols: Number(d.cols),
          samples: cells.map(at)};
}"""


def _matrix(data: dict, stack: str, layer: int, head: str) -> list[list[float]]:
    heads = data[stack][layer]
    if head != "avg":
        return heads[int(head)]
    return [[sum(h[r][c] for h in heads) / len(heads) for c in range(len(heads[0][0]))] for r in range(len(heads[0]))]


def _extremes(m: list[list[float]]) -> tuple[tuple[int, int], tuple[int, int]]:
    cells = [(v, r, c) for r, row in enumerate(m) for c, v in enumerate(row)]
    _, r1, c1 = max(cells)
    _, r0, c0 = min(cells)
    return (r1, c1), (r0, c0)


def test_explorer_is_served_as_html(service):
    with service.client() as c:
        r = c.get("/explorer")
        paths = c.get("/openapi.json").json()["paths"]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert page.lstrip().lower().startswith("<!doctype html>") and "<canvas" in page and "v1/attention" in page
    # Nothing from elsewhere (no CDN, no web fonts), and the browser is told so.
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", page, re.I)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Model and user text only ever go in as text.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", page)
    assert "/explorer" not in paths


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: the explorer's browser test needs Debian's chromium "
                    "(apt-get install -y chromium, or `make sysdeps` as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    out = Path(os.environ.get("MT_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_explorer_in_a_browser(browser_context, service, artifacts):  # no chromium: skip before starting Ray
    page = browser_context.new_page()
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    page.set_default_timeout(60_000)
    try:
        _explore(page, service)
        page.screenshot(path=str(artifacts / "explorer.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(artifacts / "explorer-failure.png"), full_page=True)
        raise
    finally:
        page.close()
    assert not problems
    assert requests and all(u.startswith(service.url + "/") or u.startswith("data:") for u in requests), requests


def _translate(page, text: str, direction: str) -> dict:
    page.fill("#text", text)
    page.select_option("#direction", direction)
    with page.expect_response(lambda r: r.url.endswith("/v1/attention")) as answer:
        page.click("#translate")
    response = answer.value
    assert response.status == 200, response.text()
    data = response.json()
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    assert page.text_content("#translation") == data["translation"]
    assert page.text_content("#source") == text
    return data


def _explore(page, service) -> None:
    page.goto(service.url + "/explorer")
    # The direction selector is filled from GET /languages.
    page.wait_for_function("() => document.querySelectorAll('#direction option').length > 0")
    with service.client() as c:
        served = {f"{lang['code']}-{t}" for lang in c.get("/languages").json() for t in lang["targets"]}
    assert set(page.eval_on_selector_all("#direction option", "os => os.map(o => o.value)")) == served

    # Markup typed by the user comes back as text, never as elements.
    _translate(page, MARKUP, "de-en")
    assert page.evaluate("() => window.__xss") is None
    assert page.evaluate("() => document.querySelectorAll('img, #source b, #translation b').length") == 0

    # The sentence, a direction, the API key: the request says exactly that.
    page.fill("#key", KEY)
    with page.expect_request(lambda r: r.url.endswith("/v1/attention")) as sent:
        data = _translate(page, SENTENCE, "en-de")
    request = sent.value
    assert json.loads(request.post_data) == {"text": SENTENCE, "source_lang": "en", "target_lang": "de"}
    assert request.headers.get("authorization") == f"Bearer {KEY}"
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0 and KEY not in page.content()

    # Cross-attention heatmap: drawn, one cell per (target, source) token, showing the selected layer and head.
    assert page.input_value("#cross-layer") == str(data["alignment_layer"]) and page.input_value("#cross-head") == "avg"
    seen = set()
    for layer, head in [(data["alignment_layer"], "avg"), (0, "0"), (0, "1"), (len(data["cross"]) - 1, "1")]:
        page.select_option("#cross-layer", str(layer))
        page.select_option("#cross-head", head)
        hot, cold = _extremes(_matrix(data, "cross", layer, head))
        drawn = page.evaluate(CANVAS, [list(hot), list(cold)])
        assert (drawn["rows"], drawn["cols"]) == (len(data["target_tokens"]), len(data["source_tokens"]))
        assert drawn["colours"] > 20, drawn  # cells of many shades, not a blank canvas
        (r, g, b), (r0, g0, _) = drawn["samples"]
        assert r > 230 and g > 210 and b < 80, (layer, head, hot, drawn["samples"])  # the largest weight: yellow
        assert r0 < 100 and g0 < 120, (layer, head, cold, drawn["samples"])  # the smallest: dark violet
        seen.add(drawn["hash"])
    assert len(seen) == 4  # each layer/head choice redrew the map differently

    # Encoder self-attention: hovering a source token draws one line per token it attends to, weighted.
    i = 2
    assert page.input_value("#self-stack") == "encoder"
    assert page.evaluate("() => document.querySelectorAll('#selfattn line').length") == 0
    page.hover(f"#selfattn text[data-side='query'][data-i='{i}']")
    layer, head = int(page.input_value("#self-layer")), page.input_value("#self-head")
    _check_lines(page, _matrix(data, "encoder", layer, head)[i], i)
    page.click(f"#selfattn text[data-side='query'][data-i='{i}']")  # pinned: survives a change of head
    page.select_option("#self-head", "1")
    _check_lines(page, data["encoder"][layer][1][i], i)
    assert page.get_attribute("#selfattn", "data-focus") == f"query:{i}"

    # Word alignment: hovering a target word highlights its source word (character offsets, code points).
    links = data["alignment"]["links"]
    assert len({tuple(ln["source"]) for ln in links}) > 1, f"the tiny model's links changed: {links}"
    for link in links[:6]:
        a, b = link["target"]
        page.hover(f"#translation .word[data-start='{a}'][data-end='{b}']")
        assert page.eval_on_selector_all("#source .word.hl", "ws => ws.map(w => w.textContent)") == \
            [SENTENCE[slice(*link["source"])]]
        assert page.eval_on_selector_all("#translation .word.hl-self", "ws => ws.map(w => w.textContent)") == \
            [data["translation"][a:b]]


def _check_lines(page, row: list[float], i: int) -> None:
    lines = page.eval_on_selector_all("#selfattn line", "ls => ls.map(l => [+l.dataset.q, +l.dataset.k, "
                                                        "+l.dataset.w, +l.getAttribute('stroke-opacity')])")
    assert len(lines) == len(row)
    for q, k, w, opacity in lines:
        assert q == i and w == pytest.approx(row[k], abs=1e-4) and opacity == pytest.approx(w, abs=1e-3)
