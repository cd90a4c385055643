"""Request validation of the gateway's OpenAI subset: what passes, what is refused and how."""

from __future__ import annotations

import json
from typing import Any

import pytest

from undertow.services.gateway.errors import InvalidRequest
from undertow.services.gateway.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    parse_request,
)

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**fields: Any) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({**BASE, **fields}).encode())


def refusal(body: bytes, model: type[Any] = ChatCompletionRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(model, body)
    assert info.value.status == 400
    return info.value


def test_minimal_chat_request() -> None:
    req = chat()
    assert req.model == "m" and not req.stream
    assert req.message_dicts() == [{"role": "user", "content": "hi"}]
    assert req.requested_max_tokens() is None
    assert req.stop_sequences() == [] and not req.include_usage()
    assert req.extension().retrievals() == []


def test_text_parts_are_joined_and_other_parts_noticed() -> None:
    content = [
        {"type": "text", "text": "look at "},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "text", "text": "this"},
    ]
    req = chat(messages=[{"role": "user", "content": content}])
    assert req.messages[0].text() == "look at this"
    assert req.messages[0].has_non_text()


def test_malformed_json_says_so() -> None:
    error = refusal(b'{"model": "m", "messages": [')
    assert error.message.startswith("We could not parse the JSON body")
    assert error.param is None


def test_body_must_be_an_object() -> None:
    assert "JSON object" in refusal(b"[1, 2]").message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"max_tokens": "5"}, "max_tokens"),  # strict: no string-to-int coercion
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": ""}, "model"),
        ({"undertow": {"retrieval": {"query": "q"}}}, "undertow.retrieval.RetrievalContext.store"),
        ({"undertow": {"unknown": 1}}, "undertow.unknown"),
    ],
)
def test_schema_violations_name_the_field(fields: dict[str, Any], param: str) -> None:
    error = refusal(json.dumps({**BASE, **fields}).encode())
    assert error.param == param
    assert error.message.startswith(param)


def test_unknown_top_level_fields_are_kept_for_the_upstream() -> None:
    req = chat(logit_bias={"42": 1}, response_format={"type": "text"})
    body = req.upstream_body(max_tokens=17)
    assert body["logit_bias"] == {"42": 1} and body["response_format"] == {"type": "text"}
    assert body["max_tokens"] == 17


def test_upstream_body_drops_the_extension_and_keeps_the_callers_cap() -> None:
    req = chat(max_tokens=5, undertow={"prompt_name": "p"})
    body = req.upstream_body(max_tokens=99)
    assert "undertow" not in body and body["max_tokens"] == 5
    assert "max_tokens" not in chat(max_completion_tokens=3).upstream_body(99)


def test_max_completion_tokens_wins() -> None:
    assert chat(max_tokens=10, max_completion_tokens=3).requested_max_tokens() == 3


def test_stop_sequences() -> None:
    assert chat(stop="END").stop_sequences() == ["END"]
    assert chat(stop=["a", "", "b"]).stop_sequences() == ["a", "b"]
    with pytest.raises(InvalidRequest) as info:
        chat(stop=list("abcde")).stop_sequences()
    assert info.value.param == "stop"


def test_extension_with_one_or_several_retrievals() -> None:
    one = {"query": "q", "store": "s", "latency_ms": 1.5, "documents": [{"id": "d"}]}
    req = chat(undertow={"retrieval": one, "session": "s1", "attributes": {"k": "v"}})
    (retrieval,) = req.extension().retrievals()
    assert retrieval.documents[0].model_dump() == {
        "id": "d",
        "score": None,
        "text": None,
        "source": None,
    }
    assert len(chat(undertow={"retrieval": [one, one]}).extension().retrievals()) == 2


def test_completion_request_takes_one_prompt() -> None:
    body = {"model": "m", "prompt": ["only one"]}
    assert parse_request(CompletionRequest, json.dumps(body).encode()).prompt_text() == "only one"
    two = parse_request(
        CompletionRequest, json.dumps({"model": "m", "prompt": ["a", "b"]}).encode()
    )
    with pytest.raises(InvalidRequest):
        two.prompt_text()


def test_usage_chunk_has_no_choices() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    chunk = chat_chunk("id", "m", 0, usage=usage)
    assert chunk["choices"] == [] and chunk["usage"] == usage
    content = chat_chunk("id", "m", 0, content="x", include_usage=True)
    assert content["choices"][0]["delta"] == {"content": "x"} and content["usage"] is None
