"""An async client for the judge model: any OpenAI-compatible chat completions server.

In production the judge is a vLLM server; offline it is Undertow's own gateway
(``undertow gateway``, SmolLM2-135M on CPU). Requests are deterministic (temperature 0) and
short (``max_tokens``); with ``json_mode`` they ask for ``response_format={"type":
"json_object"}``, which vLLM honours (guided decoding) and other servers may refuse.

Failures come in two kinds:

* :class:`JudgeUnavailable`: the server could not be reached, timed out, was overloaded
  (408, 429, 5xx) through every attempt, or refuses every request (401, 403, 404: a wrong key,
  URL or model). The caller waits and tries again; nothing is dropped.
* :class:`JudgeRefused`: the server refused *this* request (400, 413, 422: e.g. the texts are
  too long for its context) or answered with something that is no chat completion. Retrying
  it cannot help; the caller records the failure.

Retries use capped exponential backoff with jitter and honour ``Retry-After`` (up to
``max_retry_after_s``). The API key is a ``SecretStr``: sent in the ``Authorization`` header,
never logged or put in an error message.

>>> config = JudgeClientConfig(base_url="http://127.0.0.1:8300/v1", model="SmolLM2-135M-Instruct")
>>> async def ask() -> str:  # doctest: +SKIP
...     async with JudgeClient(config) as judge:
...         return (await judge.complete([{"role": "user", "content": "Say 4."}])).text
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from undertow.backoff import Backoff
from undertow.streams.judge import JudgeError

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
REFUSED_STATUS = frozenset({400, 413, 422})


class JudgeUnavailable(JudgeError):
    """The judge server cannot answer now (down, overloaded, misconfigured); try later."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JudgeRefused(JudgeError):
    """The judge server refused this request for good, or answered with no completion."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class JudgeClientConfig:
    """Where the judge is and how to call it (the worker builds this from its settings)."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_attempts: int = 4
    backoff_min_s: float = 0.5
    backoff_max_s: float = 10.0
    max_retry_after_s: float = 60.0
    max_tokens: int = 128
    temperature: float = 0.0
    json_mode: bool = False
    max_connections: int = 8

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise JudgeError(f"base_url: expected an http(s) URL, got {self.base_url!r}")
        if self.max_attempts < 1 or self.max_tokens < 1 or self.timeout_s <= 0:
            raise JudgeError(
                "expected max_attempts >= 1, max_tokens >= 1 and timeout_s > 0, got "
                f"{self.max_attempts}, {self.max_tokens}, {self.timeout_s}"
            )


@dataclass(frozen=True)
class JudgeReply:
    """The judge's answer to one request."""

    text: str
    model: str
    latency_ms: float
    attempts: int
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class JudgeClient:
    """Chat completions against ``config.base_url`` with timeouts and retries."""

    def __init__(
        self, config: JudgeClientConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        headers = {"accept": "application/json"}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=config.max_connections),
            transport=transport,
        )
        self._backoff = Backoff(config.backoff_min_s, config.backoff_max_s)

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def body(self, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        """The request body for ``messages``."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": False,
        }
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, messages: Sequence[Mapping[str, str]]) -> JudgeReply:
        """Ask the judge; retries transient failures up to ``max_attempts`` times."""
        body = self.body(messages)
        delays = self._backoff.delays()
        began = time.perf_counter()
        last = ""
        status: int | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            wait = next(delays)
            try:
                response = await self._http.post("chat/completions", json=body)
            except httpx.TimeoutException as exc:
                last, status = (
                    f"timed out after {self.config.timeout_s} s ({type(exc).__name__})",
                    None,
                )
            except httpx.TransportError as exc:
                last, status = f"cannot reach {self.config.base_url}: {type(exc).__name__}", None
            else:
                status = response.status_code
                if response.is_success:
                    return self._reply(response, attempt, began)
                detail = _error_detail(response)
                if status in REFUSED_STATUS:
                    raise JudgeRefused(f"the judge refused the request: {status} {detail}", status)
                if status not in RETRYABLE_STATUS:
                    raise JudgeUnavailable(
                        f"the judge at {self.config.base_url} answers {status} {detail}: "
                        "check the judge URL, model and API key",
                        status,
                    )
                last = f"{status} {detail}"
                wait = max(wait, _retry_after(response, self.config.max_retry_after_s))
            if attempt < self.config.max_attempts:
                logger.debug(
                    "judge attempt %d failed (%s); retrying in %.2f s", attempt, last, wait
                )
                await asyncio.sleep(wait)
        raise JudgeUnavailable(
            f"the judge failed {self.config.max_attempts} attempts; last: {last}", status
        )

    def _reply(self, response: httpx.Response, attempts: int, began: float) -> JudgeReply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
            usage = data.get("usage") or {}
            return JudgeReply(
                text=text,
                model=str(data.get("model") or self.config.model),
                latency_ms=(time.perf_counter() - began) * 1000,
                attempts=attempts,
                finish_reason=choice.get("finish_reason"),
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise JudgeRefused(
                "expected a chat completion (choices[0].message.content), got "
                f"{response.text[:200]!r}: {type(exc).__name__}",
                response.status_code,
            ) from exc


def _error_detail(response: httpx.Response) -> str:
    """The server's error message (OpenAI's ``{"error": {"message"}}`` shape), shortened."""
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        text = str(message) if message else response.text
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(text.split())[:200]


def _retry_after(response: httpx.Response, cap: float) -> float:
    """Seconds the server asked to wait (``Retry-After`` in seconds), capped; 0 if none."""
    value = response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), cap) if value else 0.0
    except ValueError:
        return 0.0
