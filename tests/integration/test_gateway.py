"""The gateway for real: SmolLM2 on CPU behind uvicorn, the official openai client in front,
events read back from the session's Kafka broker.

Gateway B serves the local model; gateway A forwards to B through the upstream backend (the
gateway is itself an OpenAI-compatible server), so the upstream path is tested without fakes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.topics import EVENTS
from undertow.services.bus import end_offsets, read_range
from undertow.services.gateway.app import create_app
from undertow.services.gateway.backends.local import LocalBackend
from undertow.services.gateway.backends.upstream import UpstreamBackend
from undertow.services.gateway.server import ServerThread
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.sdk import SdkConfig, Undertow
from undertow.services.sdk.context import parse_traceparent

pytestmark = pytest.mark.integration

MODEL = "SmolLM2-135M-Instruct"
KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"
MAX_TOKENS_CAP = 64
MAX_BODY = 16 * 1024
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
COLOURS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]
STORY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a long story about a dragon."}
]
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]


def _settings(**overrides: Any) -> GatewaySettings:
    base: dict[str, Any] = {
        "max_tokens": MAX_TOKENS_CAP,
        "default_max_tokens": 32,
        "max_request_bytes": MAX_BODY,
        "default_temperature": 0.0,
    }
    return GatewaySettings(**{**base, **overrides})


def _sdk(app: str, stack: StackInfo) -> Undertow:
    # No redaction: the test compares recorded texts with what the client received.
    return Undertow(
        SdkConfig(app=app, bootstrap_servers=stack.bootstrap_servers, builtin_redactions=())
    )


@pytest.fixture(scope="module")
def sdk_b(stack: StackInfo) -> Iterator[Undertow]:
    with _sdk("gateway-b-test", stack) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def sdk_a(stack: StackInfo) -> Iterator[Undertow]:
    with _sdk("gateway-a-test", stack) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def gateway_b(sdk_b: Undertow) -> Iterator[ServerThread]:
    """The local SmolLM2 model (loaded once; the converted copy is cached between runs)."""
    settings = _settings(api_keys=KEY_B)
    backend = LocalBackend.from_settings(settings)
    with ServerThread(create_app(settings, backend, sdk_b)) as server:
        yield server


@pytest.fixture(scope="module")
def gateway_a(gateway_b: ServerThread, sdk_a: Undertow) -> Iterator[ServerThread]:
    """Forwards to gateway B through the upstream (OpenAI-compatible) backend."""
    settings = _settings(
        api_keys=KEY_A,
        backend="openai",
        upstream_base_url=gateway_b.url + "/v1",
        upstream_api_key=KEY_B,
    )
    backend = UpstreamBackend.from_settings(settings)
    with ServerThread(create_app(settings, backend, sdk_a)) as server:
        yield server


@pytest.fixture(scope="module")
def client_b(gateway_b: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_b.url + "/v1", api_key=KEY_B, max_retries=0)


@pytest.fixture(scope="module")
def client_a(gateway_a: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_a.url + "/v1", api_key=KEY_A, max_retries=0)


class EventLog:
    """Offsets of the events topic before an action, and the decoded events after it."""

    def __init__(self, stack: StackInfo, *sdks: Undertow) -> None:
        self.bootstrap = stack.bootstrap_servers
        self.sdks = sdks
        self.codec = AvroCodec()
        self.before = end_offsets(self.bootstrap, EVENTS)

    def events(self, trace_id: str) -> list[dict[str, Any]]:
        """Every event of ``trace_id`` published since construction, in offset order."""
        for sdk in self.sdks:
            assert sdk.flush(timeout=30.0), f"SDK did not deliver in time: {sdk.stats()}"
        after = end_offsets(self.bootstrap, EVENTS)
        records = read_range(self.bootstrap, EVENTS, self.before, after, timeout=30.0)
        decoded = [self.codec.decode(r.value, "event").record for r in records]
        return [e for e in decoded if e["trace_id"] == trace_id]


def _by_type(
    events: list[dict[str, Any]], app: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if app is None or e["app"] == app:
            out.setdefault(e["body"][0].removeprefix("undertow.").lower(), []).append(e)
    return out


def _traceparent(trace_id: str = TRACE) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}


def _new_trace() -> str:
    import os

    return os.urandom(16).hex()


# -- the local model through the official client -------------------------------------------


@pytest.mark.long(seconds=30)
def test_chat_publishes_prompt_and_completion(
    stack: StackInfo, client_b: openai.OpenAI, sdk_b: Undertow
) -> None:
    log = EventLog(stack, sdk_b)
    raw = client_b.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=40,
        temperature=0,
        user="alice",
        extra_headers=_traceparent(),
    )
    reply = raw.parse()
    text = reply.choices[0].message.content
    assert text and "paris" in text.lower()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    # The response names the gateway's span in the caller's trace.
    ctx = parse_traceparent(raw.headers["traceparent"])
    assert ctx is not None and ctx.trace_id == TRACE
    assert raw.headers["x-undertow-trace-id"] == TRACE

    events = _by_type(log.events(TRACE))
    (prompt,) = events["prompt"]
    (completion,) = events["completion"]
    assert prompt["app"] == "gateway-b-test"
    assert prompt["span_id"] == ctx.parent_span_id
    assert prompt["parent_span_id"] == CALLER_SPAN
    assert prompt["body"][1]["messages"] == QUESTION
    assert prompt["body"][1]["model"] == MODEL
    body = completion["body"][1]
    assert completion["parent_span_id"] == prompt["span_id"]
    assert body["model"] == MODEL
    assert body["text"] == text
    assert body["input_tokens"] == reply.usage.prompt_tokens
    assert body["output_tokens"] == reply.usage.completion_tokens
    assert body["finish_reason"] == reply.choices[0].finish_reason
    assert body["latency_ms"] > 0
    assert completion["attributes"]["gateway.backend"] == "local"


def test_chat_stream_with_usage(stack: StackInfo, client_b: openai.OpenAI, sdk_b: Undertow) -> None:
    log = EventLog(stack, sdk_b)
    trace = _new_trace()
    stream = client_b.chat.completions.create(
        model=MODEL,
        messages=COLOURS,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-undertow-trace-id": trace},
    )
    pieces: list[str] = []
    finish: str | None = None
    usage = None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(pieces)
    assert text.strip()
    assert len([p for p in pieces if p]) > 1, "the answer should arrive in several pieces"
    assert finish in ("stop", "length")
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0

    events = _by_type(log.events(trace))
    (prompt,) = events["prompt"]
    assert prompt["parent_span_id"] is None
    body = events["completion"][0]["body"][1]
    assert body["text"] == text
    assert (body["input_tokens"], body["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert body["finish_reason"] == finish
    assert 0 < body["time_to_first_token_ms"] <= body["latency_ms"]


def test_text_completions_plain_and_stream(
    stack: StackInfo, client_b: openai.OpenAI, sdk_b: Undertow
) -> None:
    log = EventLog(stack, sdk_b)
    trace = _new_trace()
    reply = client_b.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
        extra_headers=_traceparent(trace),
    )
    assert reply.choices[0].text.strip()
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    streamed = client_b.completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_headers=_traceparent(trace),
    )
    pieces = [c.choices[0].text for c in streamed if c.choices]
    # Greedy decoding: the streamed continuation is the plain one.
    assert "".join(pieces) == reply.choices[0].text

    events = _by_type(log.events(trace))
    assert [p["body"][1]["messages"] for p in events["prompt"]] == [
        [{"role": "user", "content": "The capital of France is"}]
    ] * 2
    texts = [c["body"][1]["text"] for c in events["completion"]]
    assert texts == [reply.choices[0].text] * 2
    assert events["completion"][0]["body"][1]["output_tokens"] == reply.usage.completion_tokens


def test_stop_sequences_and_length(client_b: openai.OpenAI) -> None:
    stopped = client_b.completions.create(
        model=MODEL, prompt="Count: 1, 2, 3,", max_tokens=20, temperature=0, stop=[" 6"]
    )
    assert " 6" not in stopped.choices[0].text
    assert stopped.choices[0].finish_reason == "stop"
    capped = client_b.chat.completions.create(
        model=MODEL,
        messages=STORY,
        max_tokens=5,
        temperature=0,
    )
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 5


def test_retrieval_context_is_published(
    stack: StackInfo, client_b: openai.OpenAI, sdk_b: Undertow
) -> None:
    log = EventLog(stack, sdk_b)
    trace = _new_trace()
    doc = {
        "id": "kb-17",
        "score": 0.83,
        "text": "Paris is the capital of France.",
        "source": "kb://geo",
    }
    extension = {
        "retrieval": {
            "query": "capital of France",
            "documents": [doc],
            "store": "kb-vectors",
            "latency_ms": 12.5,
            "top_k": 3,
        },
        "prompt_name": "geo-qa",
        "prompt_version": "7",
        "attributes": {"tenant": "acme"},
    }
    client_b.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=10,
        temperature=0,
        extra_body={"undertow": extension},
        extra_headers=_traceparent(trace),
    )

    events = _by_type(log.events(trace))
    (retrieval,) = events["retrieval"]
    body = retrieval["body"][1]
    assert body["query"] == "capital of France"
    assert body["store"] == "kb-vectors"
    assert body["latency_ms"] == 12.5 and body["top_k"] == 3
    assert body["documents"] == [doc]
    assert retrieval["parent_span_id"] == CALLER_SPAN
    prompt, completion = events["prompt"][0], events["completion"][0]
    assert (prompt["body"][1]["prompt_name"], prompt["body"][1]["prompt_version"]) == (
        "geo-qa",
        "7",
    )
    assert completion["body"][1]["prompt_version"] == "7"
    assert completion["attributes"]["tenant"] == "acme"


def test_client_leaving_mid_stream_is_recorded(
    stack: StackInfo, gateway_b: ServerThread, client_b: openai.OpenAI, sdk_b: Undertow
) -> None:
    log = EventLog(stack, sdk_b)
    trace = _new_trace()
    body = _ok_body(messages=STORY, max_tokens=MAX_TOKENS_CAP, stream=True)
    with (
        httpx.Client(base_url=gateway_b.url) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {KEY_B}", **_traceparent(trace)},
        ) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())  # the first chunk, then hang up
    # The gateway (and its one generation worker) carries on.
    reply = client_b.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert reply.choices[0].message.content
    (completion,) = _by_type(log.events(trace))["completion"]
    assert completion["body"][1]["finish_reason"] == "error"
    assert completion["attributes"]["error.type"] == "ClientDisconnected"
    assert completion["body"][1]["output_tokens"] is None


def test_models_health_and_metrics(gateway_b: ServerThread, client_b: openai.OpenAI) -> None:
    assert [m.id for m in client_b.models.list()] == [MODEL]
    health = httpx.get(gateway_b.url + "/healthz").json()
    assert health["ready"] is True and health["models"] == [MODEL]
    assert httpx.get(gateway_b.url + "/readyz").status_code == 200
    metrics = httpx.get(gateway_b.url + "/metrics").text
    assert (
        'undertow_gateway_requests_total{method="POST",route="chat.completions",status="200"}'
        in metrics
    )
    assert (
        'undertow_gateway_tokens_total{direction="output",model="SmolLM2-135M-Instruct"}' in metrics
    )
    assert 'undertow_gateway_sdk{stat="enqueued"}' in metrics


# -- bad input ----------------------------------------------------------------------------


def _post(
    server: ServerThread, body: bytes | Any, key: str | None = KEY_B, **kw: Any
) -> httpx.Response:
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers, **kw)


def _ok_body(**overrides: Any) -> bytes:
    import json

    return json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 4, **overrides}).encode()


def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 1024
        sent += 1024


@pytest.mark.parametrize(
    ("name", "request_kwargs", "status", "param"),
    [
        ("oversized", {"body": _ok_body(pad="x" * MAX_BODY)}, 413, None),
        ("oversized-chunked", {"body": _chunks(4 * MAX_BODY)}, 413, None),
        ("malformed-json", {"body": b'{"model": "x", "messages": ['}, 400, None),
        ("not-an-object", {"body": b"[1, 2]"}, 400, None),
        ("messages-wrong-type", {"body": _ok_body(messages="hello")}, 400, "messages"),
        ("max-tokens-string", {"body": _ok_body(max_tokens="5")}, 400, "max_tokens"),
        (
            "bad-role",
            {"body": _ok_body(messages=[{"role": "wizard", "content": "x"}])},
            400,
            "messages.0.role",
        ),
        ("temperature-range", {"body": _ok_body(temperature=3.5)}, 400, "temperature"),
        (
            "extension-unknown-field",
            {"body": _ok_body(undertow={"retrival": {}})},
            400,
            "undertow.retrival",
        ),
        ("no-key", {"body": _ok_body(), "key": None}, 401, None),
        ("wrong-key", {"body": _ok_body(), "key": "key-b-0000000000"}, 401, None),
        ("unknown-model", {"body": _ok_body(model="gpt-9")}, 404, "model"),
        ("too-many-tokens", {"body": _ok_body(max_tokens=MAX_TOKENS_CAP + 1)}, 400, "max_tokens"),
        ("too-many-stops", {"body": _ok_body(stop=["a", "b", "c", "d", "e"])}, 400, "stop"),
    ],
)
def test_bad_requests_get_openai_errors(
    gateway_b: ServerThread,
    name: str,
    request_kwargs: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    kwargs = dict(request_kwargs)
    response = _post(gateway_b, kwargs.pop("body"), **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    # ... and the gateway carries on.
    assert httpx.get(gateway_b.url + "/healthz").status_code == 200


def test_official_client_raises_its_own_errors(
    gateway_b: ServerThread, client_b: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        client_b.chat.completions.create(model="gpt-9", messages=QUESTION)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway_b.url + "/v1", api_key="nope", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client_b.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10_000)
    # A normal request still works after all that.
    reply = client_b.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content


# -- the upstream backend: gateway A -> gateway B -------------------------------------------


def test_upstream_plain_passes_through(
    stack: StackInfo,
    client_a: openai.OpenAI,
    client_b: openai.OpenAI,
    sdk_a: Undertow,
    sdk_b: Undertow,
) -> None:
    log = EventLog(stack, sdk_a, sdk_b)
    trace = _new_trace()
    via_a = client_a.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=20,
        temperature=0,
        extra_headers=_traceparent(trace),
    )
    direct = client_b.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=20, temperature=0
    )
    assert via_a.choices[0].message.content == direct.choices[0].message.content
    assert via_a.usage == direct.usage

    events = log.events(trace)
    a, b = _by_type(events, "gateway-a-test"), _by_type(events, "gateway-b-test")
    # A forwarded the trace context: B's request span is a child of A's.
    assert b["prompt"][0]["parent_span_id"] == a["prompt"][0]["span_id"]
    body = a["completion"][0]["body"][1]
    assert body["text"] == via_a.choices[0].message.content
    assert via_a.usage is not None
    assert (body["input_tokens"], body["output_tokens"]) == (
        via_a.usage.prompt_tokens,
        via_a.usage.completion_tokens,
    )
    assert a["completion"][0]["attributes"]["gateway.backend"] == "openai"


@pytest.mark.parametrize("include_usage", [True, False])
def test_upstream_stream_passes_through(
    stack: StackInfo, client_a: openai.OpenAI, sdk_a: Undertow, include_usage: bool
) -> None:
    log = EventLog(stack, sdk_a)
    trace = _new_trace()
    stream = client_a.chat.completions.create(
        model=MODEL,
        messages=COLOURS,
        max_tokens=30,
        temperature=0,
        stream=True,
        extra_headers=_traceparent(trace),
        stream_options={"include_usage": include_usage},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert text.strip()
    assert len(usage_chunks) == (1 if include_usage else 0)

    completion = _by_type(log.events(trace), "gateway-a-test")["completion"][0]["body"][1]
    assert completion["text"] == text
    # A asks B for usage either way, so the event has exact counts even when the caller did not.
    assert completion["output_tokens"] and completion["output_tokens"] > 0
    if include_usage:
        usage = usage_chunks[0].usage
        assert usage is not None and completion["output_tokens"] == usage.completion_tokens


def test_upstream_knows_the_models_and_relays_refusals(client_a: openai.OpenAI) -> None:
    assert [m.id for m in client_a.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        client_a.chat.completions.create(model="gpt-9", messages=QUESTION)


def test_upstream_failures_are_502_and_504_and_recorded(
    stack: StackInfo, gateway_b: ServerThread, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    trace = _new_trace()
    with _sdk("gateway-c-test", stack) as sdk_c:
        log = EventLog(stack, sdk_c)
        down = _settings(backend="openai", upstream_base_url=f"http://127.0.0.1:{dead_port}/v1")
        with ServerThread(create_app(down, UpstreamBackend.from_settings(down), sdk_c)) as server:
            response = _post(server, _ok_body(), key=None, headers=_traceparent(trace))
            assert response.status_code == 502, response.text
            assert response.json()["error"]["type"] == "upstream_error"
            assert response.headers["x-undertow-trace-id"] == trace
        slow = _settings(
            backend="openai",
            upstream_base_url=gateway_b.url + "/v1",
            upstream_api_key=KEY_B,
            upstream_timeout_s=0.05,
        )
        with ServerThread(create_app(slow, UpstreamBackend.from_settings(slow), sdk_c)) as server:
            response = _post(server, _ok_body(max_tokens=60), key=None, headers=_traceparent(trace))
            assert response.status_code == 504, response.text
        completions = _by_type(log.events(trace))["completion"]
    assert [c["body"][1]["finish_reason"] for c in completions] == ["error", "error"]
    assert [c["attributes"]["error.status"] for c in completions] == ["502", "504"]
