"""What the gateway publishes through the SDK for each request: retrieval, prompt, completion.

Trace layout: the caller's ``traceparent`` (or ``x-undertow-trace-id``) names the trace and
the parent span; without one a new trace starts. The gateway's request span is the prompt
event's span; the completion is a child span of it; each retrieval the caller reported is a
sibling of the request span (the caller did it before calling). The response's
``traceparent`` names the request span, so feedback attached later joins the same trace.

A request the gateway accepted always ends in a completion event, with ``finish_reason
"error"`` and the error type in its attributes when it failed. Requests refused before
generation (bad input, auth, unknown model) publish nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from undertow.schemas.events import new_span_id, new_trace_id
from undertow.services.gateway.backends import Usage
from undertow.services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    UndertowExtension,
)
from undertow.services.sdk import Undertow
from undertow.services.sdk.context import context_from_headers, format_traceparent

log = logging.getLogger("undertow.services.gateway")


@dataclass
class Exchange:
    """One accepted request on its way through the gateway."""

    route: str
    model: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    extension: UndertowExtension
    user_id: str | None
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` naming this request's span, for the response and upstreams."""
        return format_traceparent(self.trace_id, self.span_id)

    def response_headers(self) -> dict[str, str]:
        headers = {"traceparent": self.traceparent, "x-undertow-trace-id": self.trace_id}
        if self.extension.prompt_version is not None:
            headers["x-undertow-prompt-version"] = self.extension.prompt_version
        variant = self.extension.attributes.get("ab.variant")
        if variant is not None:
            headers["x-undertow-ab-variant"] = variant
        return headers

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started) * 1000.0


class Recorder:
    """Publishes each exchange's events; the SDK never raises or blocks, so neither does this."""

    def __init__(self, sink: Undertow, backend_name: str) -> None:
        self.sink = sink
        self.backend_name = backend_name

    def begin(
        self,
        route: str,
        request: ChatCompletionRequest | CompletionRequest,
        headers: Mapping[str, str],
    ) -> Exchange:
        """Open the exchange and publish its retrievals and its prompt."""
        ctx = context_from_headers(headers)
        ext = request.extension()
        exchange = Exchange(
            route=route,
            model=request.model,
            trace_id=ctx.trace_id if ctx else new_trace_id(),
            span_id=new_span_id(),
            parent_span_id=ctx.parent_span_id if ctx else None,
            extension=ext,
            user_id=ext.user or request.user,
            stream=request.stream,
        )
        for retrieval in ext.retrievals():
            self.sink.record_retrieval(
                trace_id=exchange.trace_id,
                span_id=new_span_id(),
                parent_span_id=exchange.parent_span_id,
                query=retrieval.query,
                documents=[d.model_dump() for d in retrieval.documents],
                store=retrieval.store,
                latency_ms=retrieval.latency_ms,
                top_k=retrieval.top_k,
                attributes=dict(ext.attributes),
            )
        if isinstance(request, ChatCompletionRequest):
            messages = request.message_dicts()
        else:
            messages = [{"role": "user", "content": request.prompt_text()}]
        self.sink.record_prompt(
            trace_id=exchange.trace_id,
            span_id=exchange.span_id,
            parent_span_id=exchange.parent_span_id,
            messages=messages,
            model=request.model,
            prompt_name=ext.prompt_name,
            prompt_version=ext.prompt_version,
            user_id=exchange.user_id,
            session_id=ext.session,
            attributes=self._attributes(exchange),
        )
        return exchange

    def finish(
        self,
        exchange: Exchange,
        *,
        text: str,
        finish_reason: str | None,
        usage: Usage | None,
        model_version: str | None = None,
        adapter: str | None = None,
        error: BaseException | str | None = None,
        status: int | None = None,
    ) -> None:
        """Publish the completion: what the caller received, or the failure."""
        attributes = self._attributes(exchange)
        if error is not None:
            finish_reason = "error"
            attributes["error.type"] = error if isinstance(error, str) else type(error).__name__
            if status is not None:
                attributes["error.status"] = str(status)
        latency_ms = exchange.elapsed_ms()
        self.sink.record_completion(
            trace_id=exchange.trace_id,
            span_id=new_span_id(),
            parent_span_id=exchange.span_id,
            model=exchange.model,
            text=text,
            latency_ms=latency_ms,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            time_to_first_token_ms=exchange.ttft_ms(),
            finish_reason=finish_reason,
            model_version=model_version,
            adapter=adapter,
            prompt_name=exchange.extension.prompt_name,
            prompt_version=exchange.extension.prompt_version,
            user_id=exchange.user_id,
            session_id=exchange.extension.session,
            attributes=attributes,
        )
        log.info(
            "%s model=%s stream=%s tokens_in=%s tokens_out=%s finish=%s %.1f ms",
            exchange.route,
            exchange.model,
            exchange.stream,
            usage.input_tokens if usage else "?",
            usage.output_tokens if usage else "?",
            finish_reason,
            latency_ms,
        )

    def _attributes(self, exchange: Exchange) -> dict[str, str]:
        return {
            **exchange.extension.attributes,
            "gateway.route": exchange.route,
            "gateway.backend": self.backend_name,
            "gateway.stream": "true" if exchange.stream else "false",
        }
