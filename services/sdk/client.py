"""The Undertow client: record prompts, retrievals, completions and feedback from a serving app.

Example (needs a broker)::

    ut = Undertow(SdkConfig(app="support-bot", bootstrap_servers="localhost:9092",
                            hash_key="rotate-me", spool_dir="/var/spool/undertow"))
    with ut.trace(user_id="u-42") as tr:
        with tr.prompt(messages=[{"role": "user", "content": "hi"}], model="gpt-4o"):
            with tr.completion(model="gpt-4o") as c:
                c.set_output("hello!", input_tokens=3, output_tokens=2, finish_reason="stop")

Every ``record_*`` method is the hot path: it appends a tuple of its arguments and the time to
a bounded queue and returns (a few microseconds); checking, hashing, redaction, truncation,
Avro encoding and Kafka all happen on the delivery thread. No public method raises into the
caller, with two exceptions: the constructor raises :class:`SdkConfigError` (a bad config is
a deployment bug to find at start-up), and Python itself raises ``TypeError`` for a call with
unknown or missing keyword arguments, before any SDK code runs. Values are read on the
delivery thread: do not mutate a ``messages``, ``documents`` or ``attributes`` object after
passing it.
"""

from __future__ import annotations

import functools
import inspect
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, cast

from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import new_trace_id
from undertow.services.sdk.config import SdkConfig, SdkConfigError
from undertow.services.sdk.context import TraceContext
from undertow.services.sdk.delivery import Delivery
from undertow.services.sdk.records import COMPLETION, FEEDBACK, PROMPT, RETRIEVAL, RecordBuilder
from undertow.services.sdk.spool import Spool, SpoolError
from undertow.services.sdk.stats import LOG, SdkStats
from undertow.services.sdk.trace import Trace, current_trace

P = ParamSpec("P")
R = TypeVar("R")

_now_ns = time.time_ns


class Undertow:
    """One SDK client per process (and per app): a queue, a delivery thread, a spool.

    Use it as a context manager, or call :meth:`close` at shutdown; an ``atexit`` hook flushes
    for up to ``exit_timeout_s`` otherwise. Create it after a pre-fork server forks its
    workers: the delivery thread does not survive ``fork()``.
    """

    def __init__(self, config: SdkConfig) -> None:
        if not isinstance(config, SdkConfig):
            raise SdkConfigError(f"expected an SdkConfig, got {type(config).__name__}")
        self.config = config
        try:
            codec = config.codec or AvroCodec.for_registry(
                config.schema_registry_url, dict(config.schema_registry_config)
            )
        except Exception as exc:
            raise SdkConfigError(f"cannot build the Avro codec: {exc}") from exc
        spool: Spool | None = None
        if config.spool_dir is not None:
            try:
                spool = Spool(config.spool_dir, config.spool_max_bytes, config.spool_segment_bytes)
            except SpoolError as exc:
                if config.bootstrap_servers is None:
                    raise SdkConfigError(str(exc)) from exc
                LOG.warning("undertow sdk: running without a spool: %s", exc)
        if config.hash_key is None:
            LOG.info("undertow sdk: no hash_key configured; user and session ids are not sent")
        self._delivery = Delivery(config, RecordBuilder(config, codec), spool)
        self._queue = self._delivery.queue
        # A client dropped without close() stops its thread (which drains and spools itself).
        self._finalizer = weakref.finalize(self, self._delivery.stop_soon)
        # At exit the flush hook does it properly. (typeshed misreads finalize's slots.)
        self._finalizer.atexit = False  # type: ignore[misc]

    # -- low-level API: the hot path ------------------------------------------------------

    def record_prompt(
        self,
        *,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        messages: list[dict[str, str]],
        model: str | None = None,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        attributes: dict[str, str] | None = None,
        template_variables: Mapping[str, str] | None = None,
    ) -> None:
        """Record what was sent to a model (chat messages; a plain prompt is one user message)."""
        try:
            if len(self._queue) < self._delivery.queue_max:
                self._queue.append(
                    (PROMPT, _now_ns(), trace_id, span_id, parent_span_id, messages, model,
                     prompt_name, prompt_version, user_id, session_id, attributes,
                     template_variables)
                )  # fmt: skip
            else:
                self._delivery.drop_full()
        except Exception:
            self._hot_failure()

    def record_retrieval(
        self,
        *,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        query: str,
        documents: list[dict[str, Any]],
        store: str,
        latency_ms: float,
        top_k: int | None = None,
        attributes: dict[str, str] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Record a lookup; ``documents`` are dicts with ``id``, ``score``, ``text``, ``source``."""
        try:
            if len(self._queue) < self._delivery.queue_max:
                self._queue.append(
                    (RETRIEVAL, _now_ns(), trace_id, span_id, parent_span_id, query, documents,
                     store, latency_ms, top_k, user_id, session_id, attributes)
                )  # fmt: skip
            else:
                self._delivery.drop_full()
        except Exception:
            self._hot_failure()

    def record_completion(
        self,
        *,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        model: str,
        text: str,
        latency_ms: float,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_tokens: int | None = None,
        time_to_first_token_ms: float | None = None,
        finish_reason: str | None = None,
        model_version: str | None = None,
        adapter: str | None = None,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> None:
        """Record what a model answered, with its latency and token counts when known."""
        try:
            if len(self._queue) < self._delivery.queue_max:
                self._queue.append(
                    (COMPLETION, _now_ns(), trace_id, span_id, parent_span_id, model, text,
                     latency_ms, input_tokens, output_tokens, cached_tokens,
                     time_to_first_token_ms, finish_reason, model_version, adapter, prompt_name,
                     prompt_version, user_id, session_id, attributes)
                )  # fmt: skip
            else:
                self._delivery.drop_full()
        except Exception:
            self._hot_failure()

    def record_feedback(
        self,
        *,
        trace_id: str,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        parent_span_id: str | None = None,
        source: str = "user",
        span_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> None:
        """Record a judgement of a trace (user rating, label, correction), possibly much later."""
        try:
            if len(self._queue) < self._delivery.queue_max:
                self._queue.append(
                    (FEEDBACK, _now_ns(), trace_id, span_id, parent_span_id, score, label,
                     comment, source, user_id, session_id, attributes)
                )  # fmt: skip
            else:
                self._delivery.drop_full()
        except Exception:
            self._hot_failure()

    def _hot_failure(self) -> None:
        try:
            self._delivery.failed += 1
            self._delivery.complain("hot_path", "could not queue an event")
        except Exception:
            pass

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event recorded before the call was acknowledged by the broker or
        written (and fsynced) to the spool; False if that took longer than ``timeout`` s."""
        try:
            return self._delivery.flush(timeout)
        except Exception:
            self._hot_failure()
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout`` s and stop; events recorded afterwards are dropped."""
        try:
            self._delivery.close(timeout)
        except Exception:
            LOG.warning("undertow sdk: error while closing", exc_info=True)

    def stats(self) -> SdkStats:
        """A snapshot of the counters (see :class:`SdkStats`)."""
        return self._delivery.stats()

    def __enter__(self) -> Undertow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- high-level API -------------------------------------------------------------------

    def trace(
        self,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
        trace_id: str | None = None,
        parent: TraceContext | None = None,
    ) -> Trace:
        """A trace for one request; ``with`` it so spans and decorators inside find it.

        ``parent`` (from :func:`context_from_headers`) continues the caller's trace; otherwise
        ``trace_id`` or a fresh id is used.
        """
        try:
            if parent is not None:
                return Trace(
                    self, parent.trace_id, parent.parent_span_id, user_id, session_id, attributes
                )
            return Trace(self, trace_id or new_trace_id(), None, user_id, session_id, attributes)
        except Exception:
            self._hot_failure()
            return Trace(self, new_trace_id(), None, None, None, None)

    def current_trace(self) -> Trace | None:
        """The trace entered in this context, if any."""
        trace = current_trace()
        return trace if trace is not None and trace.client is self else None

    def feedback(
        self,
        trace_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        source: str = "user",
        parent_span_id: str | None = None,
    ) -> None:
        """Attach a judgement to a trace recorded earlier, by its id."""
        self.record_feedback(
            trace_id=trace_id,
            score=score,
            label=label,
            comment=comment,
            source=source,
            parent_span_id=parent_span_id,
        )

    def traced(
        self,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async) to run inside a trace: the current one if the
        caller is already in a trace of this client, else a new one per call."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.iscoroutinefunction(fn):
                afn = cast(Callable[P, Awaitable[Any]], fn)

                @functools.wraps(fn)
                async def arun(*args: P.args, **kwargs: P.kwargs) -> Any:
                    if self.current_trace() is not None:
                        return await afn(*args, **kwargs)
                    with self.trace(user_id=user_id, session_id=session_id, attributes=attributes):
                        return await afn(*args, **kwargs)

                return cast(Callable[P, R], arun)

            @functools.wraps(fn)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                if self.current_trace() is not None:
                    return fn(*args, **kwargs)
                with self.trace(user_id=user_id, session_id=session_id, attributes=attributes):
                    return fn(*args, **kwargs)

            return run

        return decorate

    def span(
        self,
        kind: Literal["retrieval", "completion"],
        *,
        store: str | None = None,
        top_k: int | None = None,
        model: str | None = None,
        prompt_name: str | None = None,
        prompt_version: str | None = None,
        query_arg: str = "query",
        attributes: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorate a function (sync or async) whose call is one span of the current trace
        (or of a new trace when there is none).

        * ``"retrieval"``: the query is the ``query_arg`` keyword or the first positional
          argument; the return value is the documents (dicts, or strings taken as texts).
        * ``"completion"``: the return value is the generated text (a str); ``model`` names
          the model.

        The span's latency is the call's. Exceptions are recorded and re-raised unchanged.
        """
        if kind not in ("retrieval", "completion"):
            raise SdkConfigError(f"span kind must be 'retrieval' or 'completion', got {kind!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            name = getattr(fn, "__qualname__", "function")

            def open_scope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
                trace = self.current_trace()
                owned = None
                if trace is None:
                    owned = self.trace(attributes={"function": name})
                    trace = owned.__enter__()
                if kind == "retrieval":
                    query = kwargs.get(query_arg, args[0] if args else "")
                    scope: Any = trace.retrieval(
                        query=query if isinstance(query, str) else str(query),
                        store=store or name,
                        top_k=top_k,
                        attributes=attributes,
                    )
                else:
                    scope = trace.completion(
                        model=model or "unknown",
                        prompt_name=prompt_name,
                        prompt_version=prompt_version,
                        attributes=attributes,
                    )
                scope.__enter__()
                return scope, owned

            def close_scope(scope: Any, owned: Any, result: Any, exc: BaseException | None) -> None:
                try:
                    if exc is None:
                        if kind == "retrieval":
                            scope.set_documents(_as_documents(result))
                        elif isinstance(result, str):
                            scope.set_output(result)
                    scope.__exit__(type(exc) if exc else None, exc, None)
                finally:
                    if owned is not None:
                        owned.__exit__(None, None, None)

            if inspect.iscoroutinefunction(fn):
                afn = cast(Callable[P, Awaitable[Any]], fn)

                @functools.wraps(fn)
                async def arun(*args: P.args, **kwargs: P.kwargs) -> Any:
                    scope, owned = _safe(open_scope, args, kwargs)
                    try:
                        result = await afn(*args, **kwargs)
                    except BaseException as exc:
                        _safe(close_scope, scope, owned, None, exc)
                        raise
                    _safe(close_scope, scope, owned, result, None)
                    return result

                return cast(Callable[P, R], arun)

            @functools.wraps(fn)
            def run(*args: P.args, **kwargs: P.kwargs) -> R:
                scope, owned = _safe(open_scope, args, kwargs)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    _safe(close_scope, scope, owned, None, exc)
                    raise
                _safe(close_scope, scope, owned, result, None)
                return result

            return run

        return decorate

    def wrap_openai(self, client: Any, **options: Any) -> Any:
        """Instrument an ``openai.OpenAI`` or ``AsyncOpenAI`` client in place and return it;
        see :func:`undertow.services.sdk.openai.instrument_openai`."""
        from undertow.services.sdk.openai import instrument_openai

        return instrument_openai(client, self, **options)


def _as_documents(result: Any) -> list[dict[str, Any]]:
    if not isinstance(result, Sequence) or isinstance(result, str | bytes):
        return []
    docs: list[dict[str, Any]] = []
    for index, item in enumerate(result):
        if isinstance(item, Mapping):
            docs.append(dict(item))
        else:
            docs.append({"id": str(index), "text": str(item)})
    return docs


def _safe(fn: Callable[..., Any], *args: Any) -> Any:
    """Run SDK bookkeeping around a caller's function; its failures are logged, not raised."""
    try:
        return fn(*args)
    except Exception:
        LOG.debug("undertow sdk: span bookkeeping failed", exc_info=True)
        return (None, None)
