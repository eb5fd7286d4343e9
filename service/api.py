"""HTTP ingress (FastAPI under Ray Serve): routes, validation, errors, routing by language pair.

No `from __future__ import annotations` here: Serve re-binds the route methods and FastAPI must
see real annotations (Request, the body models) to tell bodies from parameters.

Errors are typed bodies (`ErrorResponse`) that name the field, the bound and the given value:
422 invalid input, 404 unknown language pair, 413 too large, 504 deadline passed.
The LibreTranslate-compatible routes answer in LibreTranslate's shapes ({"error": "..."}).
"""


import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.clients import LocalModel, ModelClient, RemoteModel
from service.errors import RequestRejected
from service.gate import RETRY_AFTER_S, GateConfig, Gatekeeper, load_keys
from service.languages import detect_language, language_name
from service.schemas import (
    LIMITS,
    AttentionRequest,
    AttentionResponse,
    ErrorResponse,
    LibreError,
    LibreLanguage,
    LibreTranslateRequest,
    ModelInfo,
    ModelsResponse,
    Timings,
    TranslateRequest,
    TranslateResponse,
    TranslationJob,
    Usage,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((401, "missing or wrong API key (when keys are configured)"),
                       (404, "unknown language pair"), (408, "request body sent too slowly"),
                       (413, "request too large"), (415, "not JSON"),
                       (422, "invalid input"), (429, "rate limit exceeded; see Retry-After"),
                       (503, "overloaded; see Retry-After"), (504, "deadline passed"))
}
LIBRE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": LibreError, "description": v["description"]} for code, v in ERRORS.items()}
# OpenAPI 3.1 has no itemSchema: for text/event-stream, `schema` describes one parsed event
# (the fields of the SSE wire format); each `data` is one JSON object.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "contentMediaType": "application/json"},
                   "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}},
}
CLIENT_CLOSED = 499  # the status label of a request whose client went away (nginx's code; never sent)
EXPLORER_PAGE = Path(__file__).parent / "static" / "explorer.html"
# The page's script and style are inline; it loads nothing from elsewhere and talks only to this server.
EXPLORER_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}

def limits_description() -> str:
    rows = "\n".join(f"| `{name}` | {getattr(LIMITS, name)} | {field.description or ''} |"
                     for name, field in type(LIMITS).model_fields.items())
    return ("Every limit, with its value on this server (set with `MT_<NAME>` environment variables):\n\n"
            "| limit | value | meaning |\n| --- | --- | --- |\n" + rows + "\n\n"
            "Status codes: 400 malformed HTTP, 401 missing/wrong API key, 404 unknown language pair or route, "
            "405 wrong method, 408 body sent too slowly, "
            "413 too large, 415 not JSON, 422 invalid input, 429 rate limited (Retry-After), "
            "503 overloaded (Retry-After), 504 deadline passed. Never 500 for anything a client sent.")


app = FastAPI(
    title="mt-serve",
    version="0.1.0",
    summary="Neural machine translation (Marian/OPUS-MT Transformers) served by Ray Serve.",
    description=limits_description(),
    responses=ERRORS,
)
GATE = GateConfig(max_bytes=LIMITS.max_body_bytes, max_depth=LIMITS.max_json_depth,
                  body_timeout_s=LIMITS.body_timeout_s)
app.add_middleware(Gatekeeper, config=GATE)


class ApiError(Exception):
    def __init__(self, code: int, type_: str, message: str, headers: dict[str, str] | None = None,
                 **detail: Any) -> None:
        super().__init__(message)
        self.code, self.type, self.message, self.headers = code, type_, message, headers
        self.details = [dict(message=message, **detail)] if detail else []


def error_response(code: int, type_: str, message: str, details: list[dict] | None = None,
                   libre: bool = False, headers: dict[str, str] | None = None) -> JSONResponse:
    if libre:
        return JSONResponse({"error": message}, status_code=code, headers=headers)
    body = {"error": {"code": code, "type": type_, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=code, headers=headers)


def _short(value: Any) -> Any:
    """Echo a given value back only in a bounded, encodable form (lone surrogates escaped)."""
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value[:64] + "..." if len(value) > 64 else value
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return value


# pydantic error type -> how we phrase it (TGI style: "`beam_size` must be <= 8. Given: 40").
PHRASES = {
    "less_than_equal": "must be <= {le}", "less_than": "must be < {lt}", "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}", "too_long": "must have at most {max_length} items",
    "too_short": "must have at least {min_length} items", "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}", "extra_forbidden": "is not a known field",
    "missing": "is required", "finite_number": "must be a finite number",
}
BOUND_KEYS = ("le", "lt", "ge", "gt", "max_length", "min_length", "pattern")


def validation_details(exc: ValidationError | RequestValidationError) -> list[dict]:
    details = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and not str(x).startswith("function-")]
        # Union members (str | list[str]) show up as a type name in the path: not useful to a client.
        loc = [x for x in loc if x not in ("str", "list[str]") and not x.startswith("list[")]
        ctx = err.get("ctx") or {}
        bound = next((ctx[k] for k in BOUND_KEYS if k in ctx), None)
        phrase = PHRASES.get(err.get("type", ""))
        msg = phrase.format(**ctx) if phrase and all("{" + k + "}" not in phrase or k in ctx for k in BOUND_KEYS) \
            else err.get("msg", "invalid").removeprefix("Value error, ")
        field = ".".join(loc) or None
        text = f"`{field}` {msg}" if field else msg
        given = err.get("input")
        if "Given:" not in text and err.get("type") != "missing":
            text += f". Given: {_short(given)!r}"
        details.append({"field": field, "message": text, "bound": _short(bound), "given": _short(given)})
    return details


def _libre(request: Request) -> bool:
    return request.url.path in ("/translate", "/languages")


@app.exception_handler(RequestValidationError)
async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = validation_details(exc)
    return error_response(422, "invalid_request", "; ".join(d["message"] for d in details), details,
                          libre=_libre(request))


@app.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    types = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}
    return error_response(exc.status_code, types.get(exc.status_code, "http_error"), str(exc.detail),
                          libre=_libre(request), headers=getattr(exc, "headers", None))


@app.exception_handler(ApiError)
async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.code, exc.type, exc.message, exc.details, libre=_libre(request), headers=exc.headers)


@app.exception_handler(Exception)
async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Never a traceback or a file path in a body; the replica log has the details.
    return error_response(500, "internal_error", "internal error", libre=_libre(request))


def _api_error(exc: BackPressureError | RequestRejected) -> ApiError:
    """A model's refusal as the HTTP answer: a full queue (Serve's or ours) says when to come back."""
    if isinstance(exc, BackPressureError) or exc.code == 503:
        return ApiError(503, "overloaded", "the model's queue is full; retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    return ApiError(exc.code, exc.type, exc.message)


async def _until_client_leaves(request: Request) -> None:
    """Returns once the client has gone. The body has been read, so the next ASGI message is the
    disconnect; a receive that fails means Serve's proxy has already dropped the request."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # any failure to reach the proxy means nobody waits for the answer
        return


async def _unless_client_leaves(work: Any, request: Request) -> Any:
    """Runs `work`, cancelled (and with it the model's share) when the client disconnects.

    Serve cancels a request whose client leaves, but not always: requests queued in its proxy are
    delivered after their client left, and some of those ran to the end (measured: 3-4 of 200
    impatient clients' translations kept running 12 s; ray-project/ray#50046 is a batched variant)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_client_leaves(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            raise asyncio.CancelledError("the client disconnected")
        return task.result()
    finally:
        gone.cancel()
        task.cancel()  # no-op when done; when we are cancelled ourselves, the work stops too


# When the ingress itself is full, Serve's proxy sheds the request before our code sees it: the
# same Retry-After as the model's queue, so every 503 says when to come back.
@serve.deployment(name="ingress", max_ongoing_requests=256,
                  backpressure_config=BackpressureConfig(retry_after_s=RETRY_AFTER_S))
@serve.ingress(app)
class Ingress:
    def __init__(self, models: dict[str, DeploymentHandle], pairs: dict[str, str],
                 api_keys_file: str | None = None, rate_limit_per_minute: int | None = None,
                 local: dict[str, tuple] | None = None) -> None:
        from service.settings import Security

        security = Security()
        keys = load_keys(security.api_keys.get_secret_value() if security.api_keys else None,
                         api_keys_file or security.api_keys_file)
        GATE.secure(keys, rate_limit_per_minute if rate_limit_per_minute is not None
                    else security.rate_limit_per_minute)
        self.models: dict[str, ModelClient] = {name: RemoteModel(h) for name, h in models.items()}
        # Models hosted in this replica (`local`: name -> ModelHost arguments): no hop to reach them.
        self.hosts = []
        if local:
            from service.deployments import ModelHost  # torch and the model: only where a model lives

            for name, host_args in local.items():
                host = ModelHost(name, *host_args)
                self.hosts.append(host)
                self.models[name] = LocalModel(host)
        if len(self.hosts) == 1 and not models:
            GATE.overloaded = self._shed_early
        self.pairs = pairs  # "en-de" -> model name
        from service.metrics import IngressMetrics  # needs a Ray worker

        self.metrics = IngressMetrics()
        self.in_flight = 0
        self.replica = serve.get_replica_context().replica_id.unique_id

    def _shed_early(self, route: str) -> bool:
        """Whether the gate answers 503 before reading the body (the pair is not known yet)."""
        if not self.hosts[0].overloaded():
            return False
        self.metrics.observe(route, "unread", 503, 0.0)
        return True

    def reconfigure(self, config: dict) -> None:
        """Batching knobs (user_config) of the models hosted here."""
        for host in self.hosts:
            host.reconfigure(config)

    async def check_health(self) -> None:
        for host in self.hosts:
            await host.check_health()

    # -- plumbing -------------------------------------------------------------------------------------
    def _route(self, source: str, target: str) -> tuple[str, ModelClient]:
        pair = f"{source}-{target}"
        if pair not in self.pairs:
            raise ApiError(404, "unknown_language_pair",
                           f"no model serves {pair}. Served pairs: {sorted(self.pairs)}",
                           field="source_lang,target_lang", given=pair)
        name = self.pairs[pair]
        return name, self.models[name]

    async def _run(self, model: ModelClient, job: TranslationJob) -> Any:
        try:
            return await asyncio.wait_for(model.translate(job), timeout=job.timeout_s)
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", f"translation did not finish within {job.timeout_s}s",
                           field="timeout", bound=job.timeout_s) from None
        except (BackPressureError, RequestRejected) as exc:
            raise _api_error(exc) from None

    async def _observed(self, route: str, pair: str, work: Any, request: Request) -> Any:
        started = time.perf_counter()
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight, tags={"replica": self.replica})
        code = 500
        try:
            result = await _unless_client_leaves(work, request)
            code = 200
            return result
        except ApiError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = CLIENT_CLOSED
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight, tags={"replica": self.replica})
            self.metrics.observe(route, pair, code, time.perf_counter() - started)

    # -- native API -----------------------------------------------------------------------------------
    @app.post("/v1/translate", response_model=TranslateResponse, tags=["translate"], responses={
        200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
              "description": "JSON, or with `stream: true` server-sent events: `start`, one `sentence` per "
                             "sentence in document order (its `text` keeps the whitespace around it, so an item's "
                             "texts concatenate to its translation), then `done`."}})
    async def translate(self, body: TranslateRequest, request: Request) -> Any:
        """Translate one text or a list of texts. Documents are split into sentences and rejoined."""
        started = time.perf_counter()
        pair = f"{body.source_lang}-{body.target_lang}"
        pair_label = pair if pair in self.pairs else "unknown"

        async def work() -> Any:
            name, model = self._route(body.source_lang, body.target_lang)
            if body.stream:
                return await self._stream(model, body.to_job())
            result = await self._run(model, body.to_job())
            aligned = result.alignments or [None] * len(result.texts)
            return TranslateResponse(
                translations=[
                    {"text": t, "score": s if body.return_scores else None,
                     "alternatives": a if body.num_alternatives else None, "alignment": al}
                    for t, s, a, al in zip(result.texts, result.scores, result.alternatives, aligned)
                ],
                model=name, source_lang=body.source_lang, target_lang=body.target_lang,
                usage=Usage(sentences=result.sentences, input_tokens=result.input_tokens,
                            output_tokens=result.output_tokens),
                timings=Timings(total_s=time.perf_counter() - started, queue_s=result.queue_s,
                                compute_s=result.compute_s),
            )

        return await self._observed("/v1/translate", pair_label, work(), request)

    async def _stream(self, model: ModelClient, job: TranslationJob) -> StreamingResponse:
        """Server-sent events; errors that come before the first event are still plain HTTP errors."""
        events = model.stream(job)
        try:
            first = await asyncio.wait_for(anext(events), timeout=job.timeout_s)
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded", f"translation did not start within {job.timeout_s}s",
                           field="timeout", bound=job.timeout_s) from None
        except (BackPressureError, RequestRejected) as exc:
            raise _api_error(exc) from None

        async def sse() -> Any:
            try:
                yield f"data: {json.dumps(first)}\n\n"
                async for event in events:
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            except RequestRejected as exc:
                yield f"data: {json.dumps({'event': 'error', 'code': exc.code, 'message': exc.message})}\n\n"
            finally:
                await events.aclose()  # the client stopped reading: the model withdraws the rest

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/attention", response_model=AttentionResponse, tags=["translate"])
    async def attention(self, body: AttentionRequest, request: Request) -> AttentionResponse:
        """Translate one sentence and return every attention map (encoder, decoder, cross) of every
        layer and head, with the word alignment. For the explorer page and for inspection."""
        pair = f"{body.source_lang}-{body.target_lang}"

        async def work() -> AttentionResponse:
            _, model = self._route(body.source_lang, body.target_lang)
            job = TranslationJob(texts=(body.text,), source_lang=body.source_lang, target_lang=body.target_lang,
                                 beam_size=body.beam_size, max_length=None, num_alternatives=0, length_penalty=None,
                                 timeout_s=LIMITS.default_timeout_s)
            try:
                return AttentionResponse(**await asyncio.wait_for(model.attention(job), timeout=job.timeout_s))
            except TimeoutError:
                raise ApiError(504, "deadline_exceeded", "attention did not finish in time") from None
            except (BackPressureError, RequestRejected) as exc:
                raise _api_error(exc) from None

        return await self._observed("/v1/attention", pair if pair in self.pairs else "unknown", work(), request)

    @app.get("/explorer", response_class=HTMLResponse, include_in_schema=False)
    async def explorer(self) -> HTMLResponse:
        """The attention explorer: one static page (vanilla JS, no build step) over /v1/attention."""
        return HTMLResponse(EXPLORER_PAGE.read_text(encoding="utf-8"), headers=EXPLORER_HEADERS)

    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"])
    async def list_models(self) -> ModelsResponse:
        infos = await asyncio.gather(*(m.info() for m in self.models.values()))
        return ModelsResponse(models=[ModelInfo(**i) for i in infos])

    @app.get("/healthz", tags=["health"])
    async def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> JSONResponse:
        """Readiness: every model replica is loaded and has done its warm-up translation."""
        try:
            await asyncio.wait_for(asyncio.gather(*(m.info() for m in self.models.values())), timeout=5)
        except Exception:  # any model not answering means not ready
            return error_response(503, "not_ready", "models are still loading")
        return JSONResponse({"status": "ready", "models": sorted(self.models), "pairs": sorted(self.pairs)})

    # -- LibreTranslate compatibility -----------------------------------------------------------------
    @app.post("/translate", tags=["libretranslate"], responses=LIBRE_ERRORS, openapi_extra={
        "requestBody": {"content": {
            "application/json": {"schema": LibreTranslateRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": LibreTranslateRequest.model_json_schema()},
        }}})
    async def libre_translate(self, request: Request) -> JSONResponse:
        """LibreTranslate's /translate: `q` (string or list), `source` (or "auto"), `target`, `alternatives`."""
        body = await self._libre_body(request)
        source = body.source
        detected = None
        if source == "auto":
            sources = sorted({p.split("-")[0] for p in self.pairs if p.endswith("-" + body.target)})
            source, confidence = detect_language(body.q if isinstance(body.q, str) else " ".join(body.q), sources)
            detected = {"confidence": confidence, "language": source}
        pair = f"{source}-{body.target}"

        async def work() -> JSONResponse:
            if source == body.target:
                raise ApiError(422, "invalid_request", f"source and target must differ. Given: both {source!r}")
            _, model = self._route(source, body.target)
            job = TranslationJob(texts=tuple([body.q] if isinstance(body.q, str) else body.q), source_lang=source,
                                 target_lang=body.target, beam_size=None, max_length=None,
                                 num_alternatives=body.alternatives, length_penalty=None,
                                 timeout_s=LIMITS.default_timeout_s)
            result = await self._run(model, job)
            out: dict[str, Any] = {"translatedText": result.texts[0] if isinstance(body.q, str) else result.texts}
            if body.alternatives:
                out["alternatives"] = result.alternatives[0] if isinstance(body.q, str) else result.alternatives
            if detected:
                out["detectedLanguage"] = detected if isinstance(body.q, str) else [detected] * len(body.q)
            return JSONResponse(out)

        return await self._observed("/translate", pair if pair in self.pairs else "unknown", work(), request)

    async def _libre_body(self, request: Request) -> LibreTranslateRequest:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await request.body()
        try:
            if ctype == "application/x-www-form-urlencoded":
                form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
                data: Any = {k: (v if k == "q" and len(v) > 1 else v[0]) for k, v in form.items()}
            elif ctype in ("application/json", ""):
                data = json.loads(raw or b"null")
            else:
                raise ApiError(415, "unsupported_media_type",
                               f"content type must be application/json or application/x-www-form-urlencoded. "
                               f"Given: {ctype!r}")
            return LibreTranslateRequest.model_validate(data)
        except ValidationError as exc:
            details = validation_details(exc)
            raise ApiError(422, "invalid_request", "; ".join(d["message"] for d in details)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, "invalid_request", f"body is not valid JSON or form data: {exc}") from None

    @app.get("/languages", response_model=list[LibreLanguage], tags=["libretranslate"], responses=LIBRE_ERRORS)
    async def languages(self) -> list[LibreLanguage]:
        """LibreTranslate's /languages: each source language with the targets it translates into."""
        targets: dict[str, list[str]] = {}
        for pair in self.pairs:
            src, tgt = pair.split("-")
            targets.setdefault(src, []).append(tgt)
        return [LibreLanguage(code=c, name=language_name(c), targets=sorted(t)) for c, t in sorted(targets.items())]
