"""The subset of OpenAI's HTTP API the gateway speaks: request models and response builders.

Requests are validated strictly (no string-to-number coercion, as OpenAI does) straight from
the body bytes; fields the gateway does not know are kept and forwarded to an upstream.
Responses are plain dicts in OpenAI's shapes, built by the functions below.

The ``undertow`` extension field carries what only the monitor needs; OpenAI clients send it
with ``extra_body={"undertow": {...}}``:

>>> req = parse_request(ChatCompletionRequest, b'''{"model": "m",
...   "messages": [{"role": "user", "content": "Who wrote Hamlet?"}],
...   "undertow": {"prompt_name": "qa", "prompt_version": "3",
...                "retrieval": {"query": "Hamlet author", "store": "wiki", "latency_ms": 4.2,
...                              "documents": [{"id": "d1", "score": 0.9, "text": "..."}]}}}''')
>>> req.undertow.retrievals()[0].store
'wiki'
"""

from __future__ import annotations

import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from undertow.services.gateway.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Open(BaseModel):
    """Known fields checked strictly; unknown ones kept for an upstream that knows them."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ContentPart(_Open):
    """One part of a multi-part message content; only ``text`` parts carry text."""

    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text: the content string, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")

    def has_non_text(self) -> bool:
        """True when the content has parts other than text (images, audio, files)."""
        return isinstance(self.content, list) and any(p.type != "text" for p in self.content)


class StreamOptions(_Open):
    include_usage: bool = False


class RetrievedDocument(_Strict):
    id: str
    score: float | None = None
    text: str | None = None
    source: str | None = None


class RetrievalContext(_Strict):
    """A lookup the caller made before this request; published as a retrieval event."""

    query: str
    store: str
    latency_ms: float = Field(ge=0)
    documents: list[RetrievedDocument] = Field(default_factory=list)
    top_k: int | None = Field(default=None, ge=1)


class UndertowExtension(_Strict):
    """Monitoring context a caller attaches to a request (never forwarded upstream)."""

    retrieval: RetrievalContext | list[RetrievalContext] | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None
    prompt_label: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    session: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    def retrievals(self) -> list[RetrievalContext]:
        if self.retrieval is None:
            return []
        return self.retrieval if isinstance(self.retrieval, list) else [self.retrieval]


class _GenerationRequest(_Open):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    undertow: UndertowExtension | None = None

    def stop_sequences(self) -> list[str]:
        """``stop`` as a list of non-empty strings (at most four, as OpenAI allows)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(
                f"stop: expected at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}",
                param="stop",
            )
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def extension(self) -> UndertowExtension:
        return self.undertow if self.undertow is not None else UndertowExtension()

    def with_prompt(
        self, text: str, version: str, attributes: dict[str, str]
    ) -> _GenerationRequest:
        """This request with a registry prompt put first (a system message for chat, a prefix
        for text completion) and the chosen version and A/B attributes in its extension."""
        ext = self.extension()
        update: dict[str, Any] = {
            "undertow": ext.model_copy(
                update={
                    "prompt_version": version,
                    "attributes": {**ext.attributes, **attributes},
                }
            )
        }
        if isinstance(self, ChatCompletionRequest):
            update["messages"] = [ChatMessage(role="system", content=text), *self.messages]
        elif isinstance(self, CompletionRequest):
            update["prompt"] = text + "\n\n" + self.prompt_text()
        return self.model_copy(update=update)

    def upstream_body(self, max_tokens: int) -> dict[str, Any]:
        """The body to forward: what the caller sent, minus the extension, tokens capped."""
        body = self.model_dump(exclude_unset=True, exclude={"undertow"})
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = max_tokens
        return body


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def message_dicts(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` text pairs, as the events record them."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions`` (legacy text completion; one prompt per request)."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidRequest(
                f"prompt: expected one prompt per request, got {len(self.prompt)}",
                param="prompt",
            )
        return self.prompt[0]


RequestT = TypeVar("RequestT", bound=_GenerationRequest)


def parse_request(model: type[RequestT], body: bytes) -> RequestT:
    """Validate a request body; malformed JSON and schema violations raise InvalidRequest."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if not errors:
            raise InvalidRequest(str(exc)) from None
        kind, loc, msg = errors[0]["type"], errors[0]["loc"], errors[0]["msg"]
        if kind == "json_invalid":
            detail = (errors[0].get("ctx") or {}).get("error", msg)
            raise InvalidRequest(
                f"We could not parse the JSON body of your request: {detail}"
            ) from None
        if kind == "model_type" and not loc:
            raise InvalidRequest("the request body must be a JSON object") from None
        param = ".".join(str(p) for p in loc) or None
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InvalidRequest(f"{param}: {msg}{more}", param=param) from None


# -- responses ------------------------------------------------------------------------------


def usage_dict(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def chat_response(
    id_: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, int] | None,
    created: int | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def chat_chunk(
    id_: str,
    model: str,
    created: int,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` set it is the final usage-only chunk."""
    chunk: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
        return chunk
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk["choices"] = [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    ]
    if include_usage:
        chunk["usage"] = None
    return chunk


def completion_response(
    id_: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, int] | None,
    created: int | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` object with one choice."""
    return {
        "id": id_,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }


def completion_chunk(
    id_: str,
    model: str,
    created: int,
    *,
    text: str = "",
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A streamed ``text_completion`` chunk; with ``usage`` set, the final usage-only chunk."""
    chunk: dict[str, Any] = {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": model,
    }
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
    else:
        chunk["choices"] = [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        ]
    return chunk


def models_response(ids: list[str], owned_by: str = "undertow") -> dict[str, Any]:
    """``GET /v1/models``."""
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": created, "owned_by": owned_by} for i in ids
        ],
    }
