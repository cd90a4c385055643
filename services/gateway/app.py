"""The gateway's HTTP app: OpenAI's chat and text completion API over a :class:`Backend`.

``create_app(settings, backend, sdk)`` builds it; there is no module-level app. Each
generation request is read with a size cap, validated, checked against the model list and the
token cap, published as prompt (and retrieval) events, generated, answered (whole or as SSE),
and published as a completion event. Every error is OpenAI's error JSON with a 4xx or 5xx.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(bearer key when keys are configured), ``GET /healthz`` (liveness, says whether the model is
loaded), ``GET /readyz`` (503 until it is) and ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from undertow.services.gateway.auth import ApiKeys
from undertow.services.gateway.backends import Backend, CallOptions, Delta, Generation, Usage
from undertow.services.gateway.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    error_body,
)
from undertow.services.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from undertow.services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    models_response,
    parse_request,
    usage_dict,
)
from undertow.services.gateway.recorder import Exchange, Recorder
from undertow.services.gateway.serving import ServingView
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.gateway.sse import DONE_EVENT, encode_data, encode_json
from undertow.services.sdk import Undertow

log = logging.getLogger("undertow.services.gateway")

Kind = Literal["chat", "completion"]
ROUTES = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(
    settings: GatewaySettings,
    backend: Backend,
    sdk: Undertow,
    registry: ServingView | None = None,
) -> FastAPI:
    """The gateway app; the lifespan starts the backend (loads the model), then follows the
    registry when given one (serving its active version), and closes both."""
    gateway = Gateway(settings, backend, sdk, registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        if registry is not None:
            await anyio.to_thread.run_sync(registry.start)
        try:
            yield
        finally:
            if registry is not None:
                registry.close()
            await backend.close()

    app = FastAPI(
        title="Undertow gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return _error_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _error_response(400, error_body(str(exc), "invalid_request_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(exc.status_code, error_body(str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return _error_response(
            500, error_body("The server had an error processing your request.", "server_error")
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        gateway.authorize(request)
        body = await read_body(request, settings.max_request_bytes)
        return await gateway.generate(request, parse_request(ChatCompletionRequest, body), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        gateway.authorize(request)
        body = await read_body(request, settings.max_request_bytes)
        return await gateway.generate(request, parse_request(CompletionRequest, body), "completion")

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        gateway.authorize(request)
        return _json_response(models_response(backend.models()))

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json_response(
            {
                "status": "ok",
                "ready": backend.ready,
                "backend": backend.name,
                "models": backend.models(),
                "model_version": backend.model_version,
                "adapter": backend.adapter,
                "registry": registry is not None,
            }
        )

    @app.get("/readyz")
    async def readyz() -> Response:
        if not backend.ready:
            return _error_response(503, BackendUnavailable("the model is still loading").body())
        return _json_response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(AccessLog, metrics=gateway.metrics)
    return app


class Gateway:
    """The request pipeline behind the routes: limits, events, backend calls, framing."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: Backend,
        sdk: Undertow,
        registry: ServingView | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.registry = registry
        self.keys = ApiKeys(settings.keys())
        self.recorder = Recorder(sdk, backend.name)
        self.metrics = GatewayMetrics(sdk.stats)

    def authorize(self, request: Request) -> None:
        if not self.keys.check(request.headers.get("authorization")):
            raise AuthenticationFailed(
                "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."
            )

    def max_tokens(self, request: ChatCompletionRequest | CompletionRequest) -> int:
        """The caller's ``max_tokens`` within the cap, or the default when it gave none."""
        asked = request.requested_max_tokens()
        if asked is None:
            return self.settings.default_max_tokens
        if asked > self.settings.max_tokens:
            param = (
                "max_completion_tokens"
                if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens
                else "max_tokens"
            )
            raise InvalidRequest(
                f"{param} is too large: {asked}. This gateway allows at most "
                f"{self.settings.max_tokens} completion tokens per request.",
                param=param,
            )
        return asked

    async def generate(
        self, http: Request, request: ChatCompletionRequest | CompletionRequest, kind: Kind
    ) -> Response:
        """Serve one validated generation request, publishing its events."""
        if not self.backend.accepts(request.model):
            raise ModelNotFound(
                f"The model `{request.model}` does not exist or you do not have access to it.",
                param="model",
            )
        max_tokens = self.max_tokens(request)
        request.stop_sequences()  # validates the count before anything is published
        if kind == "completion" and isinstance(request, CompletionRequest):
            request.prompt_text()
        if not self.backend.ready:
            raise BackendUnavailable("the model is still loading")
        request = self._with_prompt(request)
        route = "chat.completions" if kind == "chat" else "completions"
        exchange = self.recorder.begin(route, request, http.headers)
        temperature = request.temperature
        options = CallOptions(
            max_tokens=max_tokens,
            temperature=self.settings.default_temperature if temperature is None else temperature,
            traceparent=exchange.traceparent,
        )
        if request.stream:
            return await self._stream(exchange, request, options, kind)
        began = time.perf_counter()
        try:
            if isinstance(request, ChatCompletionRequest):
                result = await self.backend.chat(request, options)
            else:
                result = await self.backend.complete(request, options)
        except BaseException as exc:
            self._failed(exchange, exc, "")
            raise
        self.metrics.backend_seconds.labels(self.backend.name, route).observe(
            time.perf_counter() - began
        )
        self._finished(
            exchange,
            result.text,
            result.finish_reason,
            result.usage,
            result.model_version,
            result.adapter,
        )
        return self._whole_response(exchange, request, result, kind)

    def _with_prompt(
        self, request: ChatCompletionRequest | CompletionRequest
    ) -> ChatCompletionRequest | CompletionRequest:
        """The request with its registry prompt resolved, when it names one."""
        ext = request.extension()
        if ext.prompt_name is None or self.registry is None:
            return request
        resolved = self.registry.resolve_prompt(
            ext.prompt_name,
            version=ext.prompt_version,
            label=ext.prompt_label,
            units={"user": ext.user or request.user, "session": ext.session},
            variables=ext.variables,
        )
        updated = request.with_prompt(resolved.text, resolved.version, resolved.attributes())
        assert isinstance(updated, ChatCompletionRequest | CompletionRequest)
        return updated

    def _whole_response(
        self,
        exchange: Exchange,
        request: ChatCompletionRequest | CompletionRequest,
        result: Generation,
        kind: Kind,
    ) -> Response:
        headers = exchange.response_headers()
        if result.model_version is not None:
            headers["x-undertow-model-version"] = result.model_version
        if result.raw is not None:
            return Response(result.raw, media_type="application/json", headers=headers)
        usage = (
            usage_dict(result.usage.input_tokens, result.usage.output_tokens)
            if result.usage
            else None
        )
        build = chat_response if kind == "chat" else completion_response
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        body = build(
            prefix + uuid.uuid4().hex, request.model, result.text, result.finish_reason, usage
        )
        return _json_response(body, headers)

    async def _stream(
        self,
        exchange: Exchange,
        request: ChatCompletionRequest | CompletionRequest,
        options: CallOptions,
        kind: Kind,
    ) -> Response:
        if isinstance(request, ChatCompletionRequest):
            deltas = self.backend.chat_stream(request, options)
        else:
            deltas = self.backend.complete_stream(request, options)
        # The first piece is awaited before answering, so a backend that fails at once (an
        # upstream refusing, a full queue) gets its own status instead of a broken 200 stream.
        began = time.perf_counter()
        try:
            first: Delta | None = await anext(deltas)
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await deltas.aclose()
            self._failed(exchange, exc, "")
            raise
        headers = {
            **exchange.response_headers(),
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        if self.backend.model_version is not None:
            headers["x-undertow-model-version"] = self.backend.model_version
        events = self._events(exchange, request, kind, first, deltas, began)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    async def _events(
        self,
        exchange: Exchange,
        request: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        first: Delta | None,
        deltas: AsyncGenerator[Delta, None],
        began: float,
    ) -> AsyncIterator[bytes]:
        id_ = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        model = request.model
        include_usage = request.include_usage()
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        error: BaseException | str | None = None
        status: int | None = None
        try:
            if kind == "chat" and (first is None or first.raw is None):
                yield encode_json(
                    chat_chunk(
                        id_,
                        model,
                        created,
                        role="assistant",
                        content="",
                        include_usage=include_usage,
                    )
                )
            delta = first
            pending: list[bytes] = []
            while delta is not None:
                if delta.text:
                    exchange.mark_first_token()
                    parts.append(delta.text)
                finish_reason = delta.finish_reason or finish_reason
                usage = delta.usage or usage
                pending += _frame(delta, kind, id_, model, created, include_usage)
                if not delta.more and pending:  # one write for what arrived together
                    yield b"".join(pending)
                    pending = []
                delta = await anext(deltas, None)
            yield b"".join([*pending, DONE_EVENT])
        except GatewayError as exc:
            error, status = exc, exc.status
            yield encode_json(exc.body())
        except BaseException as exc:  # client gone (closed or cancelled) or a bug: record, re-raise
            gone = isinstance(exc, GeneratorExit | anyio.get_cancelled_exc_class())
            error = "ClientDisconnected" if gone else exc
            if not gone:
                log.error("stream failed: %s", type(exc).__name__, exc_info=exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await deltas.aclose()
            self.metrics.backend_seconds.labels(self.backend.name, exchange.route).observe(
                time.perf_counter() - began
            )
            if exchange.first_token_at is not None:
                self.metrics.ttft_seconds.labels(exchange.route).observe(
                    exchange.first_token_at - exchange.started
                )
            text = "".join(parts)
            if error is None:
                self._finished(
                    exchange,
                    text,
                    finish_reason,
                    usage,
                    self.backend.model_version,
                    self.backend.adapter,
                )
            else:
                self._failed(exchange, error, text, status, usage)

    def _finished(
        self,
        exchange: Exchange,
        text: str,
        finish_reason: str | None,
        usage: Usage | None,
        model_version: str | None,
        adapter: str | None = None,
    ) -> None:
        self.recorder.finish(
            exchange,
            text=text,
            finish_reason=finish_reason,
            usage=usage,
            model_version=model_version,
            adapter=adapter,
        )
        self.metrics.generations.labels(exchange.route, finish_reason or "unknown").inc()
        if usage is not None:
            self.metrics.tokens.labels(exchange.model, "input").inc(usage.input_tokens)
            self.metrics.tokens.labels(exchange.model, "output").inc(usage.output_tokens)

    def _failed(
        self,
        exchange: Exchange,
        error: BaseException | str,
        text: str,
        status: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        if isinstance(error, GatewayError):
            status = error.status
            error.headers.update(exchange.response_headers())
        self.recorder.finish(
            exchange, text=text, finish_reason="error", usage=usage, error=error, status=status
        )
        self.metrics.generations.labels(exchange.route, "error").inc()


def _frame(
    delta: Delta, kind: Kind, id_: str, model: str, created: int, include_usage: bool
) -> list[bytes]:
    """The SSE events for one delta: an upstream's chunk as is, or chunks built here."""
    usage_only = delta.usage is not None and not delta.text and delta.finish_reason is None
    if delta.raw is not None:
        return [] if usage_only and not include_usage else [encode_data(delta.raw)]
    events: list[bytes] = []
    if delta.text or delta.finish_reason:
        if kind == "chat":
            chunk = chat_chunk(
                id_,
                model,
                created,
                content=delta.text or None,
                finish_reason=delta.finish_reason,
                include_usage=include_usage,
            )
        else:
            chunk = completion_chunk(
                id_, model, created, text=delta.text, finish_reason=delta.finish_reason
            )
        events.append(encode_json(chunk))
    if delta.usage is not None and include_usage:
        usage = usage_dict(delta.usage.input_tokens, delta.usage.output_tokens)
        build = chat_chunk if kind == "chat" else completion_chunk
        events.append(encode_json(build(id_, model, created, usage=usage)))
    return events


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest(f"Content-Length must be an integer, got {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_response(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        media_type="application/json",
        headers=headers,
    )


def _error_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


class AccessLog:
    """ASGI middleware: one log line and the request metrics per request, never the body.

    Latency runs to the last byte sent, so a stream counts its whole duration.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        path = scope.get("path", "")
        route = ROUTES.get(path, "other")

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - began
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            log.info("%s %s %d %.1f ms", scope.get("method"), path, status, seconds * 1000)
