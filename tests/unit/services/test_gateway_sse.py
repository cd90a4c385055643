"""SSE framing as OpenAI streams it, and decoding an upstream's stream by the SSE spec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from undertow.services.gateway.app import _frame
from undertow.services.gateway.backends import Delta, Usage
from undertow.services.gateway.sse import (
    DONE_EVENT,
    SseDecoder,
    encode_data,
    encode_json,
    iter_sse_batches,
)


def test_encoding() -> None:
    assert encode_json({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert encode_data("[DONE]") == DONE_EVENT


def feed(lines: list[str]) -> list[str]:
    decoder = SseDecoder()
    out = [p for line in lines if (p := decoder.feed_line(line)) is not None]
    tail = decoder.flush()
    return [*out, *([tail] if tail is not None else [])]


def test_decoder_follows_the_spec() -> None:
    assert feed(["data: one", "", "data: two", ""]) == ["one", "two"]
    assert feed(["data: a", "data: b", ""]) == ["a\nb"]  # multi-line data joins with \n
    assert feed([": keep-alive", "", "event: x", "id: 7", "data:no-space", ""]) == ["no-space"]
    assert feed(["data: crlf\r", "\r"]) == ["crlf"]
    assert feed(["", "", "data: unterminated"]) == ["unterminated"]
    assert feed(["data", ""]) == [""]


@pytest.mark.parametrize("cut", [1, 5, 17, 1000])
def test_batches_keep_what_arrived_together(cut: int) -> None:
    wire = (encode_json({"n": 1}) + encode_json({"n": 2}) + DONE_EVENT).decode()
    blocks = [wire[i : i + cut] for i in range(0, len(wire), cut)]

    async def read() -> AsyncIterator[str]:
        for block in blocks:
            yield block

    async def collect() -> list[list[str]]:
        return [b async for b in iter_sse_batches(read())]

    batches = asyncio.run(collect())
    assert [p for b in batches for p in b] == ['{"n":1}', '{"n":2}', "[DONE]"]
    if cut >= len(wire):
        assert len(batches) == 1  # one read, one batch


def test_feed_keeps_a_cut_line_for_the_next_block() -> None:
    d = SseDecoder()
    assert d.feed('data: {"a"') == []
    assert d.feed(": 1}\n\ndata: x") == ['{"a": 1}']
    assert d.flush() == "x"


def test_frames_for_built_and_forwarded_chunks() -> None:
    usage = Usage(3, 4)
    built = _frame(Delta(finish_reason="stop", usage=usage), "chat", "id", "m", 0, True)
    assert len(built) == 2 and b'"finish_reason":"stop"' in built[0]
    assert b'"total_tokens":7' in built[1] and b'"choices":[]' in built[1]
    assert len(_frame(Delta(finish_reason="stop", usage=usage), "chat", "id", "m", 0, False)) == 1
    # An upstream's usage-only chunk goes through only when the caller asked for usage.
    raw = Delta(usage=usage, raw='{"choices":[],"usage":{}}')
    assert _frame(raw, "chat", "id", "m", 0, True) == [encode_data(raw.raw or "")]
    assert _frame(raw, "chat", "id", "m", 0, False) == []
    assert _frame(Delta(text="hi", raw='{"x":1}'), "completion", "i", "m", 0, False) == [
        b'data: {"x":1}\n\n'
    ]
