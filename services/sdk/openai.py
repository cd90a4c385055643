"""Instrumenting the official ``openai`` client: one line, and every call is recorded.

>>> from openai import OpenAI                                   # doctest: +SKIP
>>> client = instrument_openai(OpenAI(), ut)                    # or ut.wrap_openai(OpenAI())
>>> client.chat.completions.create(model="gpt-4o-mini", messages=[...])  # doctest: +SKIP

``chat.completions.create`` and ``completions.create`` of this client instance (``OpenAI`` or
``AsyncOpenAI``) are replaced by wrappers that record a prompt event before the request and a
completion event after it: text, model (as the server names it), latency, token usage
(``cached_tokens`` included) and finish reason. Inside a trace of ``ut`` the events join it
(the prompt under the current span); otherwise each call is a trace of its own. The request's
``user`` field, when set, is the trace's user id (hashed like any other).

Streams are returned as the same ``Stream``/``AsyncStream`` object the caller would have got;
the SDK observes the chunks as the caller consumes them and records the completion when the
stream ends, is closed, or raises: the joined text, time to first token, finish reason and,
when the server sends it, usage.

**Usage in streams.** OpenAI sends token usage in a stream only when asked with
``stream_options={"include_usage": True}``. By default the wrapper does not change the
request (some OpenAI-compatible servers reject the option), so streamed completions have no
token counts unless the caller asks. With ``stream_usage=True`` the wrapper adds the option
when the caller set no ``stream_options`` and hides the extra usage-only chunk from the caller,
who sees exactly the chunks they would have seen without it.

Errors of the API call are recorded as a completion with ``finish_reason="error"`` and
re-raised unchanged. The wrapper never raises on its own account. ``with_raw_response`` and
``with_streaming_response`` calls are not instrumented.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from undertow.schemas.events import new_span_id, new_trace_id
from undertow.services.sdk.records import message_text
from undertow.services.sdk.stats import LOG

if TYPE_CHECKING:
    from undertow.services.sdk.client import Undertow

_MARK = "_undertow_instrumented"


def instrument_openai(
    client: Any,
    ut: Undertow,
    *,
    stream_usage: bool = False,
    attributes: Mapping[str, str] | None = None,
) -> Any:
    """Wrap ``client``'s completion methods in place (idempotent) and return the client."""
    if getattr(client, _MARK, False):
        return client
    is_async = _is_async(client)
    extra = {"provider": "openai", **(attributes or {})}
    for resource, endpoint, chat in (
        (client.chat.completions, "chat.completions", True),
        (client.completions, "completions", False),
    ):
        original = resource.create
        options = _Options(ut, endpoint, chat, stream_usage, extra)
        wrapper = _async_create(original, options) if is_async else _sync_create(original, options)
        resource.create = wrapper
    setattr(client, _MARK, True)
    return client


def _is_async(client: Any) -> bool:
    try:
        from openai import AsyncOpenAI

        return isinstance(client, AsyncOpenAI)
    except ImportError:  # pragma: no cover - the openai extra is not installed
        return False


class _Options:
    __slots__ = ("attributes", "chat", "endpoint", "stream_usage", "ut")

    def __init__(
        self,
        ut: Undertow,
        endpoint: str,
        chat: bool,
        stream_usage: bool,
        attributes: dict[str, str],
    ) -> None:
        self.ut = ut
        self.endpoint = endpoint
        self.chat = chat
        self.stream_usage = stream_usage
        self.attributes = {**attributes, "endpoint": endpoint}


class _Call:
    """One instrumented request: its ids, timings and what was seen of the answer."""

    def __init__(self, options: _Options, kwargs: dict[str, Any]) -> None:
        self.options = options
        ut = options.ut
        self.model = str(kwargs.get("model") or "unknown")
        self.streaming = bool(kwargs.get("stream"))
        self.hide_usage_chunk = False
        if (
            self.streaming
            and options.stream_usage
            and options.chat
            and kwargs.get("stream_options") is None
        ):
            kwargs["stream_options"] = {"include_usage": True}
            self.hide_usage_chunk = True
        trace = ut.current_trace()
        if trace is not None:
            self.trace_id = trace.trace_id
            parent = trace.current_span_id()
            self.user_id = trace.user_id or _opt_str(kwargs.get("user"))
            self.session_id = trace.session_id
            self.attributes = {**(trace.attributes or {}), **options.attributes}
        else:
            self.trace_id = new_trace_id()
            parent = None
            self.user_id = _opt_str(kwargs.get("user"))
            self.session_id = None
            self.attributes = dict(options.attributes)
        self.prompt_span = new_span_id()
        self.completion_span = new_span_id()
        ut.record_prompt(
            trace_id=self.trace_id,
            span_id=self.prompt_span,
            parent_span_id=parent,
            messages=_messages(kwargs, options.chat),
            model=self.model,
            user_id=self.user_id,
            session_id=self.session_id,
            attributes=self.attributes,
        )
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.response_model: str | None = None
        self.ttft_ms: float | None = None
        self.error: str | None = None
        self.done = False
        self.start = time.perf_counter()

    # -- results --------------------------------------------------------------------------

    def finish(self, response: Any) -> None:
        """A complete (non-streamed) response."""
        choices = getattr(response, "choices", None) or []
        first = choices[0] if choices else None
        text = ""
        if first is not None:
            if self.options.chat:
                message = getattr(first, "message", None)
                text = (getattr(message, "content", None) or "") if message is not None else ""
            else:
                text = getattr(first, "text", None) or ""
            self.finish_reason = getattr(first, "finish_reason", None)
        self.parts = [text]
        self.usage = getattr(response, "usage", None)
        self.response_model = getattr(response, "model", None)
        self.record()

    def on_chunk(self, chunk: Any) -> bool:
        """Observe one streamed chunk; True when the caller must not see it (usage we added)."""
        try:
            if self.ttft_ms is None:
                self.ttft_ms = (time.perf_counter() - self.start) * 1000.0
            choices = getattr(chunk, "choices", None) or []
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                self.usage = usage
            model = getattr(chunk, "model", None)
            if model:
                self.response_model = model
            for choice in choices:
                if getattr(choice, "index", 0) != 0:
                    continue
                if self.options.chat:
                    delta = getattr(choice, "delta", None)
                    piece = getattr(delta, "content", None) if delta is not None else None
                else:
                    piece = getattr(choice, "text", None)
                if piece:
                    self.parts.append(piece)
                reason = getattr(choice, "finish_reason", None)
                if reason:
                    self.finish_reason = reason
            return self.hide_usage_chunk and not choices and usage is not None
        except Exception:
            LOG.debug("undertow sdk: could not read a stream chunk", exc_info=True)
            return False

    def fail(self, exc: BaseException) -> None:
        self.finish_reason = "error"
        self.error = type(exc).__name__
        self.record()

    def record(self) -> None:
        """Record the completion once (a stream may end, be closed and collected)."""
        if self.done:
            return
        self.done = True
        try:
            usage = self.usage
            input_tokens = _opt_int(getattr(usage, "prompt_tokens", None))
            output_tokens = _opt_int(getattr(usage, "completion_tokens", None))
            details = getattr(usage, "prompt_tokens_details", None)
            cached = _opt_int(getattr(details, "cached_tokens", None))
            attributes = self.attributes
            if self.error is not None:
                attributes = {**attributes, "error": self.error}
            if self.streaming:
                attributes = {**attributes, "stream": "true"}
            self.options.ut.record_completion(
                trace_id=self.trace_id,
                span_id=self.completion_span,
                parent_span_id=self.prompt_span,
                model=self.response_model or self.model,
                text="".join(self.parts),
                latency_ms=(time.perf_counter() - self.start) * 1000.0,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_tokens=cached,
                time_to_first_token_ms=self.ttft_ms,
                finish_reason=self.finish_reason,
                user_id=self.user_id,
                session_id=self.session_id,
                attributes=attributes,
            )
        except Exception:
            LOG.debug("undertow sdk: could not record a completion", exc_info=True)


def _start(options: _Options, kwargs: dict[str, Any]) -> _Call | None:
    try:
        return _Call(options, kwargs)
    except Exception:
        LOG.debug("undertow sdk: could not instrument a call", exc_info=True)
        return None


def _sync_create(original: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        call = _start(options, kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.fail(exc)
            raise
        if call is not None:
            _observe_result(call, result)
        return result

    return create


def _async_create(original: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        call = _start(options, kwargs)
        try:
            result = await original(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.fail(exc)
            raise
        if call is not None:
            _observe_result(call, result)
        return result

    return create


def _observe_result(call: _Call, result: Any) -> None:
    try:
        if not call.streaming:
            call.finish(result)
            return
        iterator = getattr(result, "_iterator", None)
        if iterator is None:  # not the Stream this version of openai returns: leave it
            call.record()
            return
        if hasattr(iterator, "__anext__"):
            result._iterator = _observe_async(iterator, call)
            result.close = _after_async(result.close, call)
        else:
            result._iterator = _observe_sync(iterator, call)
            result.close = _after(result.close, call)
    except Exception:
        LOG.debug("undertow sdk: could not observe a response", exc_info=True)


def _observe_sync(chunks: Iterator[Any], call: _Call) -> Iterator[Any]:
    try:
        for chunk in chunks:
            if call.on_chunk(chunk):
                continue
            yield chunk
    except GeneratorExit:
        call.record()
        raise
    except BaseException as exc:
        call.fail(exc)
        raise
    call.record()


async def _observe_async(chunks: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    try:
        async for chunk in chunks:
            if call.on_chunk(chunk):
                continue
            yield chunk
    except GeneratorExit:
        call.record()
        raise
    except BaseException as exc:
        call.fail(exc)
        raise
    call.record()


def _after(close: Callable[[], None], call: _Call) -> Callable[[], None]:
    @functools.wraps(close)
    def closing() -> None:
        try:
            close()
        finally:
            call.record()

    return closing


def _after_async(close: Callable[[], Any], call: _Call) -> Callable[[], Any]:
    @functools.wraps(close)
    async def closing() -> None:
        try:
            await close()
        finally:
            call.record()

    return closing


def _messages(kwargs: Mapping[str, Any], chat: bool) -> list[dict[str, str]]:
    """The request's messages as role/content strings (a plain prompt is one user message)."""
    if chat:
        out = []
        for message in kwargs.get("messages") or []:
            if isinstance(message, Mapping):
                role = message.get("role")
                content = message.get("content")
            else:  # a pydantic message object
                role = getattr(message, "role", None)
                content = getattr(message, "content", None)
            try:
                text = message_text(content)
            except Exception:
                text = ""
            out.append({"role": str(role or "user"), "content": text})
        return out
    prompt = kwargs.get("prompt")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        text = "\n".join(prompt)
    else:
        text = "[tokens]" if prompt is not None else ""
    return [{"role": "user", "content": text}]


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
