"""The judge client (services/judge_client.py) against a real HTTP server on 127.0.0.1.

The server is a tiny Starlette app speaking the OpenAI chat completions API, run by uvicorn
on a thread (the gateway's ``ServerThread``): a test double of the remote judge that answers
from a script, so retries, timeouts and the auth header go over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from undertow.services.gateway.server import ServerThread
from undertow.services.judge_client import (
    JudgeClient,
    JudgeClientConfig,
    JudgeRefused,
    JudgeUnavailable,
)

KEY = "sk-judge-test-0123456789"
MESSAGES = [{"role": "system", "content": "Rate 1-5."}, {"role": "user", "content": "Q/A"}]


def completion(text: str, model: str = "judge-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


@dataclass
class Script:
    """What the fake judge answers, one entry per request (the last one repeats), and what it
    received."""

    answers: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, list[Script]]]:
    current: list[Script] = [Script()]

    async def chat(request: Request) -> Response:
        script = current[0]
        script.requests.append(json.loads(await request.body()))
        script.headers.append(dict(request.headers))
        index = min(len(script.requests), len(script.answers)) - 1
        answer = script.answers[index]
        if isinstance(answer, float):  # a slow judge: answer after this many seconds
            await asyncio.sleep(answer)
            return JSONResponse(completion("Score: 3"))
        if isinstance(answer, tuple):
            status, body, headers = answer
            if isinstance(body, str):
                return PlainTextResponse(body, status_code=status, headers=headers)
            return JSONResponse(body, status_code=status, headers=headers)
        return JSONResponse(completion(str(answer)))

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with ServerThread(app) as thread:
        yield thread, current


def use(server: tuple[ServerThread, list[Script]], *answers: Any) -> tuple[str, Script]:
    thread, current = server
    current[0] = Script(list(answers))
    return thread.url + "/v1", current[0]


def config(url: str, **overrides: Any) -> JudgeClientConfig:
    base: dict[str, Any] = {
        "base_url": url,
        "model": "judge-model",
        "api_key": SecretStr(KEY),
        "timeout_s": 5.0,
        "max_attempts": 3,
        "backoff_min_s": 0.01,
        "backoff_max_s": 0.05,
        "max_tokens": 24,
    }
    return JudgeClientConfig(**{**base, **overrides})


def ask(cfg: JudgeClientConfig) -> Any:
    async def run() -> Any:
        async with JudgeClient(cfg) as client:
            return await client.complete(MESSAGES)

    return asyncio.run(run())


def error(status: int, message: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"message": message, "type": "x"}}, headers


def test_a_request_is_deterministic_short_and_authorised(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, script = use(server, '{"score": 4, "reason": "ok"}')
    reply = ask(config(url))
    assert reply.text == '{"score": 4, "reason": "ok"}'
    assert reply.model == "judge-model"
    assert reply.attempts == 1
    assert (reply.input_tokens, reply.output_tokens, reply.finish_reason) == (12, 5, "stop")
    assert reply.latency_ms > 0
    (body,) = script.requests
    assert body == {
        "model": "judge-model",
        "messages": MESSAGES,
        "temperature": 0.0,
        "max_tokens": 24,
        "stream": False,
    }
    assert script.headers[0]["authorization"] == f"Bearer {KEY}"


def test_json_mode_asks_for_a_json_object_and_no_key_sends_no_header(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, script = use(server, '{"score": 2}')
    ask(config(url, json_mode=True, api_key=None))
    assert script.requests[0]["response_format"] == {"type": "json_object"}
    assert "authorization" not in script.headers[0]


def test_429_and_5xx_are_retried_until_an_answer(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, script = use(
        server,
        error(429, "slow down", **{"retry-after": "0.05"}),
        error(503, "loading"),
        "Score: 5",
    )
    reply = ask(config(url))
    assert reply.text == "Score: 5"
    assert reply.attempts == 3
    assert len(script.requests) == 3


def test_attempts_run_out_as_unavailable(server: tuple[ServerThread, list[Script]]) -> None:
    url, script = use(server, error(502, "bad gateway"))
    with pytest.raises(JudgeUnavailable, match="failed 3 attempts; last: 502 bad gateway") as info:
        ask(config(url))
    assert info.value.status == 502
    assert len(script.requests) == 3


def test_a_slow_judge_times_out_and_is_retried(server: tuple[ServerThread, list[Script]]) -> None:
    url, script = use(server, 2.0)
    with pytest.raises(JudgeUnavailable, match=r"timed out after 0\.3 s"):
        ask(config(url, timeout_s=0.3, max_attempts=2))
    assert len(script.requests) == 2


def test_an_unreachable_judge_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(JudgeUnavailable, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        ask(config(f"http://127.0.0.1:{port}/v1", max_attempts=2))


def test_a_bad_request_is_refused_without_retries(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, script = use(server, error(400, "context length exceeded"))
    with pytest.raises(JudgeRefused, match="400 context length exceeded") as info:
        ask(config(url))
    assert info.value.status == 400
    assert len(script.requests) == 1


def test_a_wrong_key_is_unavailable_at_once_and_never_shows_the_key(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, script = use(server, error(401, "invalid api key"))
    with pytest.raises(JudgeUnavailable, match="401 invalid api key: check") as info:
        ask(config(url))
    assert len(script.requests) == 1
    assert KEY not in str(info.value)
    assert KEY not in repr(config(url)) and KEY not in str(config(url))


def test_a_reply_that_is_no_completion_is_refused(
    server: tuple[ServerThread, list[Script]],
) -> None:
    url, _ = use(server, (200, "<html>proxy</html>", {}))
    with pytest.raises(JudgeRefused, match="expected a chat completion"):
        ask(config(url))
    url, _ = use(server, (200, {"choices": []}, {}))
    with pytest.raises(JudgeRefused, match="IndexError"):
        ask(config(url))


def test_bad_configs_are_refused() -> None:
    from undertow.streams.judge import JudgeError

    with pytest.raises(JudgeError, match="http"):
        JudgeClientConfig(base_url="localhost:8000", model="m")
    with pytest.raises(JudgeError, match="max_attempts"):
        JudgeClientConfig(base_url="http://x/v1", model="m", max_attempts=0)
