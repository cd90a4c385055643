"""From captured calls to encoded ``event`` records, on the SDK's background thread.

The hot path captures a ``record_*`` call as a plain tuple (kind, wall-clock time in ns, then
the arguments in the order listed below) and appends it to the queue. :class:`RecordBuilder`
turns one such tuple into the Avro record of ``schemas/avro/event.v2.avsc``: fresh event id,
hashed user and session ids, redacted and capped texts, the ``truncated`` flag, and finally the
encoded bytes. Every check of the caller's values happens here, so a bad value costs the caller
nothing and is counted as a failure instead of raised.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final

from undertow.errors import UndertowError
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import EVENT_BODY_NAMES, new_span_id
from undertow.services.sdk.config import SdkConfig
from undertow.services.sdk.redaction import Redactor

# Kinds, and the tuple layouts the hot path appends (index 0 kind, 1 time_ns):
PROMPT: Final = 0
# 2 trace_id, 3 span_id, 4 parent_span_id, 5 messages, 6 model, 7 prompt_name,
# 8 prompt_version, 9 user_id, 10 session_id, 11 attributes, 12 template_variables
RETRIEVAL: Final = 1
# 2 trace_id, 3 span_id, 4 parent_span_id, 5 query, 6 documents, 7 store, 8 latency_ms,
# 9 top_k, 10 user_id, 11 session_id, 12 attributes
COMPLETION: Final = 2
# 2 trace_id, 3 span_id, 4 parent_span_id, 5 model, 6 text, 7 latency_ms, 8 input_tokens,
# 9 output_tokens, 10 cached_tokens, 11 time_to_first_token_ms, 12 finish_reason,
# 13 model_version, 14 adapter, 15 prompt_name, 16 prompt_version, 17 user_id,
# 18 session_id, 19 attributes
FEEDBACK: Final = 3
# 2 trace_id, 3 span_id (None: a fresh one), 4 parent_span_id, 5 score, 6 label, 7 comment,
# 8 source, 9 user_id, 10 session_id, 11 attributes

KIND_NAMES: Final = ("prompt", "retrieval", "completion", "feedback")

_MIN_TEXT_CAP = 256


class RecordError(UndertowError):
    """A captured call cannot become a valid event. The message names the field and the
    type that came, never the caller's text."""


class RecordBuilder:
    """Builds and encodes events from captured calls; used by one thread only."""

    def __init__(self, config: SdkConfig, codec: AvroCodec) -> None:
        self.config = config
        self.codec = codec
        self.redactor = Redactor(config.builtin_redactions, config.redact)
        key = config.hash_key_bytes
        self._hash: Callable[[Any], str | None] = (
            _hasher(key) if key is not None else lambda _value: None
        )
        self._threshold = int(config.sample_rate * 2**64)
        self.truncated = 0

    # -- sampling -------------------------------------------------------------------------

    def sampled(self, trace_id: object) -> bool:
        """Whether the trace is kept: deterministic by trace id, so a whole trace is kept or
        dropped together, in every process that uses the same rate (the gateway included).

        A W3C trace id's low 64 bits are uniform; they are compared with
        ``sample_rate * 2**64`` (OpenTelemetry's TraceIdRatioBased rule). Other strings are
        hashed first.
        """
        rate = self.config.sample_rate
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        return trace_sample_value(trace_id) < self._threshold

    # -- building -------------------------------------------------------------------------

    def encode(self, item: tuple[Any, ...]) -> tuple[bytes, bytes]:
        """The Kafka key (trace id) and value (encoded event) of one captured call.

        When the encoded event is above ``max_event_bytes``, the text cap is cut by four and
        the event rebuilt, down to a floor; then RecordError.
        """
        cap = self.config.max_text_bytes
        while True:
            record, truncated = self.build(item, cap)
            try:
                value = self.codec.encode("event", record)
            except UndertowError as exc:
                # The codec's message quotes values; name only the kind of event.
                raise RecordError(
                    f"{KIND_NAMES[item[0]]} event does not match the schema ({type(exc).__name__})"
                ) from None
            if len(value) <= self.config.max_event_bytes:
                break
            if cap <= _MIN_TEXT_CAP:
                raise RecordError(
                    f"{KIND_NAMES[item[0]]} event is {len(value)} bytes even with texts cut "
                    f"to {cap} bytes; max_event_bytes is {self.config.max_event_bytes}"
                )
            cap = max(_MIN_TEXT_CAP, cap // 4)
        if truncated:
            self.truncated += 1
        return record["trace_id"].encode(), value

    def build(
        self, item: tuple[Any, ...], text_cap: int | None = None
    ) -> tuple[dict[str, Any], bool]:
        """The event record of a captured call and whether anything was cut to a cap."""
        cap = text_cap or self.config.max_text_bytes
        kind = item[0]
        cut = _Cut()
        if kind == PROMPT:
            (_, t_ns, trace_id, span_id, parent, messages, model, prompt_name, prompt_version,
             user_id, session_id, attributes, template_variables) = item  # fmt: skip
            body: dict[str, Any] = {
                "messages": self._messages(messages, cap, cut),
                "model": _opt_str(model, "model"),
                "prompt_name": _opt_str(prompt_name, "prompt_name"),
                "prompt_version": _opt_str(prompt_version, "prompt_version"),
                "template_variables": self._attributes(template_variables, cut),
            }
        elif kind == RETRIEVAL:
            (_, t_ns, trace_id, span_id, parent, query, documents, store, latency_ms, top_k,
             user_id, session_id, attributes) = item  # fmt: skip
            body = {
                "query": self._text(query, "query", cap, cut),
                "documents": self._documents(documents, cap, cut),
                "store": _str(store, "store"),
                "latency_ms": _float(latency_ms, "latency_ms"),
                "top_k": _opt_int(top_k, "top_k"),
            }
        elif kind == COMPLETION:
            (_, t_ns, trace_id, span_id, parent, model, text, latency_ms, input_tokens,
             output_tokens, cached_tokens, ttft_ms, finish_reason, model_version, adapter,
             prompt_name, prompt_version, user_id, session_id, attributes) = item  # fmt: skip
            body = {
                "model": _str(model, "model"),
                "model_version": _opt_str(model_version, "model_version"),
                "adapter": _opt_str(adapter, "adapter"),
                "prompt_name": _opt_str(prompt_name, "prompt_name"),
                "prompt_version": _opt_str(prompt_version, "prompt_version"),
                "text": self._text(text, "text", cap, cut),
                "input_tokens": _opt_int(input_tokens, "input_tokens"),
                "output_tokens": _opt_int(output_tokens, "output_tokens"),
                "cached_tokens": _opt_int(cached_tokens, "cached_tokens"),
                "latency_ms": _float(latency_ms, "latency_ms"),
                "time_to_first_token_ms": _opt_float(ttft_ms, "time_to_first_token_ms"),
                "finish_reason": _opt_str(finish_reason, "finish_reason"),
            }
        elif kind == FEEDBACK:
            (_, t_ns, trace_id, span_id, parent, score, label, comment, source, user_id,
             session_id, attributes) = item  # fmt: skip
            body = {
                "score": _opt_float(score, "score"),
                "label": _opt_str(label, "label"),
                "comment": None if comment is None else self._text(comment, "comment", cap, cut),
                "source": _str(source, "source"),
            }
            if span_id is None:
                span_id = new_span_id()
        else:
            raise RecordError(f"unknown captured kind {kind!r}")
        record = {
            "event_id": str(uuid.uuid4()),
            "trace_id": _str(trace_id, "trace_id"),
            "span_id": _str(span_id, "span_id"),
            "parent_span_id": _opt_str(parent, "parent_span_id"),
            "event_time": t_ns // 1000,
            "app": self.config.app,
            "environment": self.config.environment,
            "user_hash": self._hash(user_id),
            "session_hash": self._hash(session_id),
            "attributes": self._attributes(attributes, cut),
            "body": (EVENT_BODY_NAMES[KIND_NAMES[kind]], body),
        }
        if kind != FEEDBACK:  # the feedback body has no truncated flag
            body["truncated"] = cut.any
        return record, cut.any

    # -- fields ---------------------------------------------------------------------------

    def _text(self, value: object, name: str, cap: int, cut: _Cut) -> str:
        """Redacted and capped to ``cap`` UTF-8 bytes (cut on a character boundary)."""
        if not isinstance(value, str):
            raise RecordError(f"{name}: expected str, got {type(value).__name__}")
        if len(value) > cap:  # a text of more than cap characters has more than cap bytes
            value = value[:cap]
            cut.any = True
        if self.redactor.active:
            value = self.redactor.redact(value)
        if len(value) * 4 > cap:
            data = value.encode("utf-8", "replace")
            if len(data) > cap:
                value = data[:cap].decode("utf-8", "ignore")
                cut.any = True
        return value

    def _messages(self, messages: object, cap: int, cut: _Cut) -> list[dict[str, str]]:
        if not isinstance(messages, list | tuple):
            raise RecordError(f"messages: expected a list, got {type(messages).__name__}")
        if len(messages) > self.config.max_messages:
            # Keep the first (system prompt) and the most recent ones.
            keep = self.config.max_messages
            messages = [messages[0], *messages[len(messages) - keep + 1 :]]
            cut.any = True
        out = []
        for message in messages:
            if not isinstance(message, Mapping):
                raise RecordError(f"messages: expected dicts, got {type(message).__name__}")
            role = message.get("role", "user")
            out.append(
                {
                    "role": _str(role, "messages[].role"),
                    "content": self._text(
                        message_text(message.get("content")), "messages[].content", cap, cut
                    ),
                }
            )
        return out

    def _documents(self, documents: object, cap: int, cut: _Cut) -> list[dict[str, Any]]:
        if documents is None:
            return []
        if not isinstance(documents, list | tuple):
            raise RecordError(f"documents: expected a list, got {type(documents).__name__}")
        if len(documents) > self.config.max_documents:
            documents = documents[: self.config.max_documents]
            cut.any = True
        out = []
        for doc in documents:
            if not isinstance(doc, Mapping):
                raise RecordError(f"documents: expected dicts, got {type(doc).__name__}")
            doc_id = doc.get("id")
            text = doc.get("text")
            out.append(
                {
                    "id": "" if doc_id is None else str(doc_id),
                    "score": _opt_float(doc.get("score"), "documents[].score"),
                    "text": None
                    if text is None
                    else self._text(text, "documents[].text", cap, cut),
                    "source": _opt_str(doc.get("source"), "documents[].source"),
                }
            )
        return out

    def _attributes(self, attributes: object, cut: _Cut) -> dict[str, str]:
        """String keys and values (others are str()-ed), redacted, count and size capped."""
        if not attributes:
            return {}
        if not isinstance(attributes, Mapping):
            raise RecordError(f"attributes: expected a dict, got {type(attributes).__name__}")
        limit = self.config.max_attribute_bytes
        out: dict[str, str] = {}
        for key, value in attributes.items():
            if len(out) >= self.config.max_attributes:
                cut.any = True
                break
            name = key if isinstance(key, str) else str(key)
            text = value if isinstance(value, str) else str(value)
            out[name[:limit]] = self._text(text, "attributes", limit, cut)
        return out


class _Cut:
    """Whether anything of one event was cut to a cap."""

    __slots__ = ("any",)

    def __init__(self) -> None:
        self.any = False


def message_text(content: object) -> str:
    """The text of a chat message's content: a string, or OpenAI content parts joined
    (text parts as they are, others as ``[<type>]``); None is ''."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                kind = part.get("type")
                text = part.get("text")
                parts.append(text if isinstance(text, str) else f"[{kind or 'part'}]")
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    raise RecordError(f"messages[].content: expected str or parts, got {type(content).__name__}")


def trace_sample_value(trace_id: object) -> int:
    """A uniform 64-bit value of a trace id: its low 64 bits when it is W3C hex."""
    text = trace_id if isinstance(trace_id, str) else str(trace_id)
    if len(text) == 32:
        try:
            return int(text[16:], 16)
        except ValueError:
            pass
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _hasher(key: bytes) -> Callable[[Any], str | None]:
    @lru_cache(maxsize=4096)
    def hashed(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def hash_id(value: Any) -> str | None:
        if value is None or value == "":
            return None
        return hashed(value if isinstance(value, str) else str(value))

    return hash_id


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{name}: expected str, got {type(value).__name__}")
    return value


def _opt_str(value: object, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def _opt_float(value: object, name: str) -> float | None:
    return None if value is None else _float(value, name)


def _opt_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{name}: expected an int, got {type(value).__name__}")
    if not -(2**31) <= value < 2**31:
        raise RecordError(f"{name}: {value} does not fit an Avro int")
    return value
