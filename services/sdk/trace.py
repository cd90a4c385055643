"""Traces and spans for serving code: ``with ut.trace() as tr:`` and the scopes inside it.

A :class:`Trace` holds what every event of one request shares (trace id, user, session,
attributes) and hands out scopes that record one event each: a prompt (recorded at once), a
retrieval or a completion (recorded when their ``with`` block ends, with the latency it took).
Scopes entered with ``with`` become the parent of the spans opened inside them; the current
trace and span live in context variables, so they follow threads' and asyncio tasks' contexts.
None of these methods raises into the caller; exceptions of the caller's own code inside a
scope are recorded (``finish_reason="error"``) and propagate unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from undertow.schemas.events import new_span_id
from undertow.services.sdk.context import format_traceparent
from undertow.services.sdk.stats import LOG

if TYPE_CHECKING:
    from undertow.services.sdk.client import Undertow

# (trace, id of the innermost entered span of that trace, or the trace's incoming parent)
_CURRENT: ContextVar[tuple[Trace, str | None] | None] = ContextVar("undertow_trace", default=None)


def current_trace() -> Trace | None:
    """The trace entered in this context (thread or task), if any."""
    entry = _CURRENT.get()
    return entry[0] if entry is not None else None


class _Scope:
    """Makes its span the parent of the spans opened inside its ``with`` block."""

    trace: Trace
    span_id: str
    _token: Token[tuple[Trace, str | None] | None] | None = None

    def _push(self) -> None:
        try:
            self._token = _CURRENT.set((self.trace, self.span_id))
        except Exception:  # pragma: no cover - ContextVar.set does not fail in practice
            self._token = None

    def _pop(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            # Exited in another context than entered (ValueError): leave it.
            with contextlib.suppress(ValueError):
                _CURRENT.reset(token)


class Trace:
    """One request's trace. Build it with :meth:`Undertow.trace`."""

    def __init__(
        self,
        client: Undertow,
        trace_id: str,
        parent_span_id: str | None,
        user_id: str | None,
        session_id: str | None,
        attributes: Mapping[str, str] | None,
    ) -> None:
        self.client = client
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self.user_id = user_id
        self.session_id = session_id
        self.attributes = dict(attributes) if attributes else None
        self._token: Token[tuple[Trace, str | None] | None] | None = None

    # -- context --------------------------------------------------------------------------

    def __enter__(self) -> Trace:
        try:
            self._token = _CURRENT.set((self, self.parent_span_id))
        except Exception:  # pragma: no cover
            self._token = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(ValueError):
                _CURRENT.reset(token)

    def current_span_id(self) -> str | None:
        """The span new spans of this trace hang under in this context."""
        entry = _CURRENT.get()
        if entry is not None and entry[0] is self:
            return entry[1]
        return self.parent_span_id

    def traceparent(self) -> str:
        """A W3C ``traceparent`` header for an outgoing call made from the current span."""
        return format_traceparent(self.trace_id, self.current_span_id() or new_span_id())

    def _attrs(self, extra: Mapping[str, str] | None) -> dict[str, str] | None:
        """The trace's attributes overlaid with an event's own."""
        if not extra:
            return self.attributes
        try:
            return {**self.attributes, **extra} if self.attributes else dict(extra)
        except (TypeError, ValueError):  # not a mapping: the delivery thread counts it
            return extra  # type: ignore[return-value]

    # -- events ---------------------------------------------------------------------------

    def prompt(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        model: str | None = None,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        template_variables: Mapping[str, str] | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> PromptScope:
        """Record what is sent to the model, now; ``with`` it to nest the completion under it."""
        scope = PromptScope(self, new_span_id(), prompt_name, prompt_version)
        self.client.record_prompt(
            trace_id=self.trace_id,
            span_id=scope.span_id,
            parent_span_id=self.current_span_id(),
            messages=messages,  # type: ignore[arg-type]  # checked on the delivery thread
            model=model,
            prompt_name=prompt_name,
            prompt_version=prompt_version,
            user_id=self.user_id,
            session_id=self.session_id,
            attributes=self._attrs(attributes),
            template_variables=template_variables,
        )
        return scope

    def retrieval(
        self,
        *,
        query: str,
        store: str,
        top_k: int | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> RetrievalScope:
        """A scope that times a lookup; call ``set_documents`` inside it."""
        return RetrievalScope(self, query, store, top_k, attributes)

    def record_retrieval(
        self,
        *,
        query: str,
        documents: Sequence[Mapping[str, Any]],
        store: str,
        latency_ms: float,
        top_k: int | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Record a lookup already timed by the caller; returns its span id."""
        span_id = new_span_id()
        self.client.record_retrieval(
            trace_id=self.trace_id,
            span_id=span_id,
            parent_span_id=self.current_span_id(),
            query=query,
            documents=documents,  # type: ignore[arg-type]
            store=store,
            latency_ms=latency_ms,
            top_k=top_k,
            attributes=self._attrs(attributes),
            user_id=self.user_id,
            session_id=self.session_id,
        )
        return span_id

    def completion(
        self,
        *,
        model: str,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        adapter: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> CompletionScope:
        """A scope that times a model call; call ``set_output`` (and ``first_token``) inside.

        Inside a prompt's ``with`` block, the prompt's name and version are the defaults.
        """
        prompt = _PROMPTS.get()
        if prompt is not None and prompt.trace is self:
            prompt_name = prompt_name or prompt.prompt_name
            prompt_version = prompt_version or prompt.prompt_version
        return CompletionScope(
            self, model, prompt_name, prompt_version, model_version, adapter, attributes
        )

    def record_completion(
        self,
        *,
        model: str,
        text: str,
        latency_ms: float,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int | None = None,
        time_to_first_token_ms: float | None = None,
        finish_reason: str | None = None,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        adapter: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Record a model call already timed by the caller; returns its span id."""
        span_id = new_span_id()
        self.client.record_completion(
            trace_id=self.trace_id,
            span_id=span_id,
            parent_span_id=self.current_span_id(),
            model=model,
            text=text,
            latency_ms=latency_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            time_to_first_token_ms=time_to_first_token_ms,
            finish_reason=finish_reason,
            model_version=model_version,
            adapter=adapter,
            prompt_name=prompt_name,
            prompt_version=prompt_version,
            user_id=self.user_id,
            session_id=self.session_id,
            attributes=self._attrs(attributes),
        )
        return span_id

    def feedback(
        self,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        source: str = "user",
    ) -> None:
        """A judgement of this trace (see :meth:`Undertow.feedback` for one given later)."""
        self.client.record_feedback(
            trace_id=self.trace_id,
            score=score,
            label=label,
            comment=comment,
            parent_span_id=self.current_span_id(),
            source=source,
            user_id=self.user_id,
            session_id=self.session_id,
        )


# The innermost entered prompt scope, so completions inside it inherit its name and version.
_PROMPTS: ContextVar[PromptScope | None] = ContextVar("undertow_prompt", default=None)


class PromptScope(_Scope):
    """A recorded prompt; entering it makes it the parent of what follows."""

    def __init__(
        self, trace: Trace, span_id: str, prompt_name: str | None, prompt_version: str | None
    ) -> None:
        self.trace = trace
        self.span_id = span_id
        self.prompt_name = prompt_name
        self.prompt_version = prompt_version
        self._prompt_token: Token[PromptScope | None] | None = None

    def __enter__(self) -> PromptScope:
        self._push()
        self._prompt_token = _PROMPTS.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._prompt_token = self._prompt_token, None
        if token is not None:
            with contextlib.suppress(ValueError):
                _PROMPTS.reset(token)
        self._pop()


class RetrievalScope(_Scope):
    """Times a lookup from ``__enter__`` to ``__exit__`` and records it then."""

    def __init__(
        self,
        trace: Trace,
        query: str,
        store: str,
        top_k: int | None,
        attributes: Mapping[str, str] | None,
    ) -> None:
        self.trace = trace
        self.span_id = new_span_id()
        self.parent_span_id = trace.current_span_id()
        self.query = query
        self.store = store
        self.top_k = top_k
        self.attributes = attributes
        self.documents: Sequence[Mapping[str, Any]] = ()
        self._start = time.perf_counter()

    def set_documents(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """What the lookup returned: dicts with ``id``, ``score``, ``text``, ``source``."""
        self.documents = documents

    def __enter__(self) -> RetrievalScope:
        self._start = time.perf_counter()
        self._push()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pop()
        try:
            attributes = self.trace._attrs(self.attributes)
            if exc_type is not None:
                attributes = {**(attributes or {}), "error": exc_type.__name__}
            self.trace.client.record_retrieval(
                trace_id=self.trace.trace_id,
                span_id=self.span_id,
                parent_span_id=self.parent_span_id,
                query=self.query,
                documents=list(self.documents),  # type: ignore[arg-type]
                store=self.store,
                latency_ms=(time.perf_counter() - self._start) * 1000.0,
                top_k=self.top_k,
                attributes=attributes,
                user_id=self.trace.user_id,
                session_id=self.trace.session_id,
            )
        except Exception:
            LOG.debug("undertow sdk: retrieval scope failed to record", exc_info=True)


class CompletionScope(_Scope):
    """Times a model call from ``__enter__`` to ``__exit__`` and records it then.

    An exception leaving the block is recorded as ``finish_reason="error"`` and propagates.
    """

    def __init__(
        self,
        trace: Trace,
        model: str,
        prompt_name: str | None,
        prompt_version: str | None,
        model_version: str | None,
        adapter: str | None,
        attributes: Mapping[str, str] | None,
    ) -> None:
        self.trace = trace
        self.span_id = new_span_id()
        self.parent_span_id = trace.current_span_id()
        self.model = model
        self.prompt_name = prompt_name
        self.prompt_version = prompt_version
        self.model_version = model_version
        self.adapter = adapter
        self.attributes = attributes
        self.text = ""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None
        self.ttft_ms: float | None = None
        self._start = time.perf_counter()

    def __enter__(self) -> CompletionScope:
        self._start = time.perf_counter()
        self._push()
        return self

    def first_token(self) -> None:
        """Mark the arrival of the first streamed token (sets time to first token once)."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self._start) * 1000.0

    def set_output(
        self,
        text: str,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int | None = None,
        finish_reason: str | None = None,
        model: str | None = None,
    ) -> None:
        """What the model answered; ``model`` replaces the requested one (e.g. a snapshot)."""
        self.text = text
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_tokens = cached_tokens
        self.finish_reason = finish_reason
        if model:
            self.model = model

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pop()
        try:
            attributes = self.trace._attrs(self.attributes)
            finish_reason = self.finish_reason
            if exc_type is not None:
                finish_reason = "error"
                attributes = {**(attributes or {}), "error": exc_type.__name__}
            self.trace.client.record_completion(
                trace_id=self.trace.trace_id,
                span_id=self.span_id,
                parent_span_id=self.parent_span_id,
                model=self.model,
                text=self.text,
                latency_ms=(time.perf_counter() - self._start) * 1000.0,
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_tokens=self.cached_tokens,
                time_to_first_token_ms=self.ttft_ms,
                finish_reason=finish_reason,
                model_version=self.model_version,
                adapter=self.adapter,
                prompt_name=self.prompt_name,
                prompt_version=self.prompt_version,
                user_id=self.trace.user_id,
                session_id=self.trace.session_id,
                attributes=attributes,
            )
        except Exception:
            LOG.debug("undertow sdk: completion scope failed to record", exc_info=True)
