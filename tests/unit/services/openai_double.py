"""A local OpenAI-compatible HTTP server with canned answers, for the wrapper's tests.

It stands in for the remote API only: ``/v1/chat/completions`` and ``/v1/completions``, plain
JSON or SSE streams (with a usage chunk when ``stream_options.include_usage`` is set), and a
500 error for the model named ``boom``. It runs uvicorn on a loopback port in a thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from undertow.infra.process import wait_until

PIECES = ["Hel", "lo", " there"]
ANSWER = "".join(PIECES)
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 3,
    "total_tokens": 14,
    "prompt_tokens_details": {"cached_tokens": 4},
}
SERVED_MODEL = "gpt-test-2024-01-01"


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _error() -> JSONResponse:
    return JSONResponse(
        {"error": {"message": "model exploded", "type": "server_error", "code": None}},
        status_code=500,
    )


async def chat(request: Request) -> Response:
    payload = await request.json()
    if payload.get("model") == "boom":
        return _error()
    base = {"id": "chatcmpl-1", "created": int(time.time()), "model": SERVED_MODEL}
    if not payload.get("stream"):
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )
    chunk = {**base, "object": "chat.completion.chunk"}
    chunks = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    chunks += [
        {**chunk, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
        for p in PIECES
    ]
    chunks.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    if (payload.get("stream_options") or {}).get("include_usage"):
        chunks.append({**chunk, "choices": [], "usage": USAGE})
    return _sse(chunks)


async def completions(request: Request) -> Response:
    payload = await request.json()
    if payload.get("model") == "boom":
        return _error()
    base = {"id": "cmpl-1", "created": int(time.time()), "model": SERVED_MODEL}
    if not payload.get("stream"):
        return JSONResponse(
            {
                **base,
                "object": "text_completion",
                "choices": [{"index": 0, "text": ANSWER, "finish_reason": "stop"}],
                "usage": USAGE,
            }
        )
    chunks: list[dict[str, Any]] = [
        {
            **base,
            "object": "text_completion",
            "choices": [{"index": 0, "text": p, "finish_reason": None}],
        }
        for p in PIECES
    ]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    return _sse(chunks)


@contextmanager
def serve() -> Iterator[str]:
    """Run the server on a free loopback port; yields its base URL (``.../v1``)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(
        lambda: True if server.started else None,
        timeout=10,
        what="the OpenAI test double",
        interval=0.01,
        alive=thread.is_alive,
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
