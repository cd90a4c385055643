"""The openai wrapper against a local OpenAI-compatible server (tests/unit/services/
openai_double.py): sync and async clients, plain and streamed, chat and text completions,
errors (services/sdk/openai.py). Events land in the spool of a broker-less SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from undertow.services.sdk import Undertow, instrument_openai

from .openai_double import ANSWER, PIECES, SERVED_MODEL, USAGE, serve
from .sdk_fixtures import body, spool_only, spooled_events

MESSAGES: Any = [{"role": "user", "content": "say hello"}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve() as url:
        yield url


def events_of(ut: Undertow, spool_dir: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind, body, record) of every event, after closing the SDK."""
    ut.close()
    return [(*body(record), record) for _, record in spooled_events(spool_dir)]


def check_pair(
    events: list[tuple[str, dict[str, Any], dict[str, Any]]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A prompt then its completion, in one trace, the completion under the prompt."""
    assert [kind for kind, _, _ in events] == ["prompt", "completion"]
    (_, prompt, prompt_rec), (_, completion, completion_rec) = events
    assert prompt_rec["trace_id"] == completion_rec["trace_id"]
    assert completion_rec["parent_span_id"] == prompt_rec["span_id"]
    return prompt, completion


def test_sync_chat_completion(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = instrument_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0), ut)
    response = client.chat.completions.create(model="gpt-test", messages=MESSAGES, user="end-7")
    assert response.choices[0].message.content == ANSWER
    events = events_of(ut, tmp_path)
    prompt, completion = check_pair(events)
    assert prompt["messages"] == MESSAGES and prompt["model"] == "gpt-test"
    assert completion["text"] == ANSWER
    assert completion["model"] == SERVED_MODEL
    assert (completion["input_tokens"], completion["output_tokens"]) == (
        USAGE["prompt_tokens"],
        USAGE["completion_tokens"],
    )
    assert completion["cached_tokens"] == 4
    assert completion["finish_reason"] == "stop"
    assert completion["latency_ms"] > 0
    assert events[0][2]["user_hash"] is not None
    assert events[1][2]["attributes"]["endpoint"] == "chat.completions"


def test_sync_chat_stream_is_observed_as_consumed(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = ut.wrap_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0))
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)  # the caller gets the object openai returns
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert pieces == PIECES
    _, completion = check_pair(events_of(ut, tmp_path))
    assert completion["text"] == ANSWER
    assert completion["finish_reason"] == "length"
    assert completion["time_to_first_token_ms"] is not None
    assert completion["time_to_first_token_ms"] <= completion["latency_ms"]
    assert completion["input_tokens"] is None  # not asked for: the request is unchanged


def test_stream_usage_is_requested_and_its_chunk_hidden(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = instrument_openai(
        OpenAI(base_url=base_url, api_key="k", max_retries=0), ut, stream_usage=True
    )
    with client.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert all(chunk.choices for chunk in chunks)  # the usage-only chunk was not shown
    assert len(chunks) == 1 + len(PIECES) + 1
    _, completion = check_pair(events_of(ut, tmp_path))
    assert (completion["input_tokens"], completion["output_tokens"]) == (11, 3)


def test_caller_asking_for_usage_sees_the_usage_chunk(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = instrument_openai(
        OpenAI(base_url=base_url, api_key="k", max_retries=0), ut, stream_usage=True
    )
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    _, completion = check_pair(events_of(ut, tmp_path))
    assert completion["output_tokens"] == 3


def test_stream_closed_early_still_records_what_was_seen(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = ut.wrap_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0))
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    next(stream)  # the role chunk
    next(stream)  # "Hel"
    stream.close()
    _, completion = check_pair(events_of(ut, tmp_path))
    assert completion["text"] == PIECES[0]
    assert completion["finish_reason"] is None


def test_text_completion_plain_and_streamed(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = ut.wrap_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0))
    assert client.completions.create(model="m", prompt="once upon").choices[0].text == ANSWER
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt="once upon", stream=True
    ))  # fmt: skip
    assert streamed == ANSWER
    events = events_of(ut, tmp_path)
    assert [kind for kind, _, _ in events] == ["prompt", "completion"] * 2
    assert events[0][1]["messages"] == [{"role": "user", "content": "once upon"}]
    assert events[1][1]["text"] == ANSWER and events[1][1]["input_tokens"] == 11
    assert events[3][1]["text"] == ANSWER and events[3][1]["finish_reason"] == "stop"
    assert events[3][2]["attributes"]["endpoint"] == "completions"


def test_api_error_is_recorded_and_reraised_unchanged(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = ut.wrap_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="boom", messages=MESSAGES)
    assert info.value.status_code == 500
    _, completion = check_pair(events_of(ut, tmp_path))
    assert completion["finish_reason"] == "error"
    assert completion["text"] == ""


def test_calls_inside_a_trace_join_it(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = ut.wrap_openai(OpenAI(base_url=base_url, api_key="k", max_retries=0))
    with ut.trace(user_id="u", attributes={"tenant": "acme"}) as tr:
        client.chat.completions.create(model="m", messages=MESSAGES)
    events = events_of(ut, tmp_path)
    assert {record["trace_id"] for _, _, record in events} == {tr.trace_id}
    assert events[1][2]["attributes"]["tenant"] == "acme"


def test_instrumenting_twice_records_once(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)
    client = OpenAI(base_url=base_url, api_key="k", max_retries=0)
    instrument_openai(instrument_openai(client, ut), ut)
    client.chat.completions.create(model="m", messages=MESSAGES)
    assert len(events_of(ut, tmp_path)) == 2


def test_async_client_plain_and_streamed(tmp_path: Path, base_url: str) -> None:
    ut = spool_only(tmp_path)

    async def run() -> tuple[str, str]:
        client = ut.wrap_openai(AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0))
        plain = await client.chat.completions.create(model="m", messages=MESSAGES)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        parts = [
            c.choices[0].delta.content
            async for c in stream
            if c.choices and c.choices[0].delta.content
        ]
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="boom", messages=MESSAGES)
        await client.close()
        return plain.choices[0].message.content or "", "".join(parts)

    assert asyncio.run(run()) == (ANSWER, ANSWER)
    events = events_of(ut, tmp_path)
    completions = [b for kind, b, _ in events if kind == "completion"]
    assert [c["text"] for c in completions] == [ANSWER, ANSWER, ""]
    assert completions[0]["input_tokens"] == 11
    assert completions[1]["time_to_first_token_ms"] is not None
    assert completions[1]["finish_reason"] == "length"
    assert completions[2]["finish_reason"] == "error"
