"""Any OpenAI-compatible server as the backend: vLLM, another gateway, OpenAI itself.

Requests are forwarded as the caller sent them (minus the ``undertow`` extension, with the
token cap applied and the trace context passed on); answers come back unchanged. Streams are
read event by event and each chunk is handed on the moment it arrives, while its text, finish
reason and usage are read for the events. Streaming requests always ask the upstream for
usage (``stream_options.include_usage``) so token counts are exact; the gateway drops that
last chunk again when the caller did not ask for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import httpx

from undertow.services.gateway.backends import Backend, CallOptions, Delta, Generation, Usage
from undertow.services.gateway.errors import (
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from undertow.services.gateway.protocol import ChatCompletionRequest, CompletionRequest
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.gateway.sse import DONE, iter_sse_batches

if TYPE_CHECKING:
    from undertow.services.registry.state import Version

log = logging.getLogger(__name__)


class UpstreamBackend(Backend):
    """Forwards to ``base_url`` (ending in ``/v1``) over one pooled HTTP client."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None
        self._models: list[str] = []
        self._version: Version | None = None
        self._served_name: str | None = None

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> UpstreamBackend:
        return cls(
            settings.upstream_base_url,
            api_key=settings.upstream_api_key.get_secret_value(),
            timeout_s=settings.upstream_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            max_connections=settings.upstream_max_connections,
        )

    async def start(self) -> None:
        """Open the connection pool and learn the upstream's models (best effort)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, timeout=self._timeout, limits=self._limits
            )
        try:
            await self.refresh_models()
        except UpstreamError as exc:
            log.warning("upstream models unknown (%s); every model name is forwarded", exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh_models(self) -> list[str]:
        """Fetch ``GET /models`` from the upstream."""
        response = await self._send("GET", "/models", None, None)
        data = _json(response.content)
        self._models = [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
        return self._models

    def models(self) -> list[str]:
        return list(self._models)

    def accepts(self, model: str) -> bool:
        """Unknown upstream models (the list could not be read) are left to the upstream."""
        return not self._models or model in self._models

    async def chat(self, request: ChatCompletionRequest, options: CallOptions) -> Generation:
        body = self._served(request.upstream_body(options.max_tokens))
        body["stream"] = False
        body.pop("stream_options", None)
        return await self._generate("/chat/completions", body, options, _chat_message_text)

    def chat_stream(
        self, request: ChatCompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        body = self._served(request.upstream_body(options.max_tokens))
        return self._stream("/chat/completions", body, options, _chat_delta_text)

    async def complete(self, request: CompletionRequest, options: CallOptions) -> Generation:
        body = self._served(request.upstream_body(options.max_tokens))
        body["stream"] = False
        body.pop("stream_options", None)
        return await self._generate("/completions", body, options, _choice_text)

    def complete_stream(
        self, request: CompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        body = self._served(request.upstream_body(options.max_tokens))
        return self._stream("/completions", body, options, _choice_text)

    # -- registry -------------------------------------------------------------------------

    def use_version(self, version: Version | None) -> None:
        """Ask the upstream for the registry version's served name: its ``served_name``
        metadata (a vLLM ``--lora-modules`` name, say), else the model asked for."""
        self._version = version
        served = version.metadata.get("served_name") if version is not None else None
        self._served_name = served or None

    @property
    def model_version(self) -> str | None:
        return self._version.version if self._version is not None else None

    @property
    def adapter(self) -> str | None:
        return self._version.adapter_path if self._version is not None else None

    def _served(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._served_name is not None:
            body["model"] = self._served_name
        return body

    # -- transport ------------------------------------------------------------------------

    def _headers(self, options: CallOptions | None) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        if options is not None and options.traceparent:
            headers["traceparent"] = options.traceparent
        return headers

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise UpstreamError("upstream backend used before start()")
        return self._client

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, options: CallOptions | None
    ) -> httpx.Response:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            response = await self._http().request(
                method, path, content=content, headers=self._headers(options)
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream {self.base_url}{path} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base_url}{path} failed: {exc!r}") from exc
        if response.status_code >= 400:
            raise _refusal(response.status_code, response.content, f"{self.base_url}{path}")
        return response

    async def _generate(
        self,
        path: str,
        body: dict[str, Any],
        options: CallOptions,
        text_of: Callable[[dict[str, Any]], str],
    ) -> Generation:
        response = await self._send("POST", path, body, options)
        data = _json(response.content)
        choice = _first_choice(data)
        return Generation(
            text=text_of(choice),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            usage=_usage(data.get("usage")),
            raw=response.content,
        )

    async def _stream(
        self,
        path: str,
        body: dict[str, Any],
        options: CallOptions,
        text_of: Callable[[dict[str, Any]], str],
    ) -> AsyncGenerator[Delta, None]:
        body["stream"] = True
        stream_options = dict(body.get("stream_options") or {})
        stream_options["include_usage"] = True
        body["stream_options"] = stream_options
        client = self._http()
        request = client.build_request(
            "POST",
            path,
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers=self._headers(options),
        )
        where = f"{self.base_url}{path}"
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream {where} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {where} failed: {exc!r}") from exc
        try:
            if response.status_code >= 400:
                raise _refusal(response.status_code, await response.aread(), where)
            done = False
            async for batch in iter_sse_batches(response.aiter_text()):
                if done:  # read to the end, so the connection goes back to the pool
                    continue
                if DONE in batch:
                    batch = batch[: batch.index(DONE)]
                    done = True
                for i, data in enumerate(batch):
                    chunk = _json(data.encode())
                    if "error" in chunk:
                        raise UpstreamError(f"upstream {where} failed mid-stream: {chunk['error']}")
                    choices = chunk.get("choices") or []
                    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
                    yield Delta(
                        text=text_of(choice) if choice else "",
                        finish_reason=choice.get("finish_reason") if choice else None,
                        usage=_usage(chunk.get("usage")),
                        raw=data,
                        more=i < len(batch) - 1,
                    )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"upstream {where} timed out mid-stream: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {where} failed mid-stream: {exc!r}") from exc
        finally:
            await response.aclose()


def _json(content: bytes) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise UpstreamError(f"upstream answered with invalid JSON: {content[:200]!r}") from exc
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream answered with JSON that is not an object: {data!r:.200}")
    return data


def _refusal(status: int, content: bytes, where: str) -> UpstreamError | UpstreamRejected:
    """A 4xx is the caller's problem and keeps its status; anything else is a bad gateway."""
    message = content[:500].decode(errors="replace")
    param = code = None
    try:
        error = json.loads(content).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param, code = error.get("param"), error.get("code")
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    if 400 <= status < 500 and status not in (408, 429):
        return UpstreamRejected(status, message, param=param, code=code)
    if status in (408, 504):
        return UpstreamTimeout(f"upstream {where} timed out ({status}): {message}")
    return UpstreamError(f"upstream {where} answered {status}: {message}")


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError(f"upstream answer has no choices: {json.dumps(data)[:200]}")
    choice: dict[str, Any] = choices[0]
    return choice


def _chat_message_text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or {}
    return str(message.get("content") or "")


def _chat_delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or {}
    return str(delta.get("content") or "")


def _choice_text(choice: dict[str, Any]) -> str:
    return str(choice.get("text") or "")


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    try:
        return Usage(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached) if cached is not None else None,
        )
    except (TypeError, ValueError):
        return None
