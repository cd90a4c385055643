"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

Encoding for the gateway's own streams, and an incremental decoder for an upstream's stream
that follows the SSE spec (multi-line ``data``, comments, CRLF), so chunks are forwarded the
moment their blank line arrives.

>>> encode_data('{"a": 1}')
b'data: {"a": 1}\\n\\n'
>>> d = SseDecoder()
>>> [d.feed_line(x) for x in ["data: {\\"a\\": 1}", ""]]
[None, '{"a": 1}']
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


def encode_data(data: str) -> bytes:
    """One SSE event carrying ``data`` (which must not contain newlines: compact JSON)."""
    return b"data: " + data.encode() + b"\n\n"


def encode_json(obj: Any) -> bytes:
    """One SSE event carrying ``obj`` as compact JSON."""
    return encode_data(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


class SseDecoder:
    """Turns lines of an event stream into the ``data`` payload of each complete event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._partial = ""

    def feed(self, text: str) -> list[str]:
        """Feed a block of the stream as it was read; returns the payloads it completed.

        A line cut at the block's end is kept for the next block.
        """
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        return [p for line in lines if (p := self.feed_line(line)) is not None]

    def feed_line(self, line: str) -> str | None:
        """Feed one line (without its line ending); returns a payload when an event ends."""
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                return None
            payload = "\n".join(self._data)
            self._data = []
            return payload
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if not sep:
            value = ""
        elif value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        return None

    def flush(self) -> str | None:
        """The payload of an event left unterminated at the end of the stream, if any."""
        if self._partial:
            self.feed_line(self._partial)
            self._partial = ""
        return self.feed_line("")


async def iter_sse_batches(blocks: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    """The ``data`` payloads (``[DONE]`` included) completed by each block read off the wire.

    Events that arrived together stay together, so they can be forwarded in one write.
    """
    decoder = SseDecoder()
    async for block in blocks:
        payloads = decoder.feed(block)
        if payloads:
            yield payloads
    tail = decoder.flush()
    if tail is not None:
        yield [tail]
