"""Model backends behind one interface: OpenAI-compatible upstreams and local models.

A backend turns a validated request into a :class:`Generation` (whole answer) or a stream of
:class:`Delta` (pieces as they come). The gateway around it does validation, auth, events,
metrics and the HTTP framing, so a backend only generates. Backends are chosen by name from
:data:`BACKENDS`; each is imported only when chosen (the local one pulls in torch).

>>> sorted(BACKENDS)
['local', 'openai']
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from undertow.services.gateway.errors import GatewayError

if TYPE_CHECKING:
    from undertow.services.gateway.protocol import ChatCompletionRequest, CompletionRequest
    from undertow.services.gateway.settings import GatewaySettings
    from undertow.services.registry.state import Version


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation, exact as the model's tokenizer counts them."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int | None = None


@dataclass(frozen=True)
class Generation:
    """A whole answer. ``raw`` is an upstream's own response body, returned unchanged."""

    text: str
    finish_reason: str
    usage: Usage | None = None
    model_version: str | None = None
    adapter: str | None = None
    raw: bytes | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed answer: new text, the finish reason, or the usage at the end.

    ``raw`` is an upstream's chunk JSON, forwarded unchanged; None means the gateway builds
    the chunk from the fields. ``more`` says the next delta is already in hand (it arrived in
    the same read), so the gateway may send both in one write instead of one per chunk.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: str | None = None
    more: bool = False


@dataclass(frozen=True)
class CallOptions:
    """What the gateway settled before calling the backend."""

    max_tokens: int
    temperature: float
    traceparent: str | None = None


class Backend(ABC):
    """Generates answers for the gateway. Implementations must never block the event loop."""

    name: ClassVar[str]

    async def start(self) -> None:
        """Get ready to serve (load a model, learn an upstream's models)."""
        return

    async def close(self) -> None:
        """Release what ``start`` took."""
        return

    @property
    def ready(self) -> bool:
        """True once requests can be served."""
        return True

    @property
    def model_version(self) -> str | None:
        """A version of the served weights to record with completions, when known."""
        return None

    @property
    def adapter(self) -> str | None:
        """The LoRA adapter applied to the served model, if any."""
        return None

    def use_version(self, version: Version | None) -> None:
        """Serve ``version`` from the registry from now on (None: the configured model).

        Called on the registry follower's thread; must not block for long. The default
        serves the same weights and only records nothing: backends that can switch override
        it.
        """
        return

    @abstractmethod
    def models(self) -> list[str]:
        """Names of the models served, as ``GET /v1/models`` lists them."""

    def accepts(self, model: str) -> bool:
        """True when a request for ``model`` can be served (else the gateway answers 404)."""
        return model in self.models()

    @abstractmethod
    async def chat(self, request: ChatCompletionRequest, options: CallOptions) -> Generation:
        """Answer a chat request in one piece."""

    @abstractmethod
    def chat_stream(
        self, request: ChatCompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        """Answer a chat request piece by piece; closing the iterator cancels generation."""

    @abstractmethod
    async def complete(self, request: CompletionRequest, options: CallOptions) -> Generation:
        """Continue a plain text prompt in one piece."""

    @abstractmethod
    def complete_stream(
        self, request: CompletionRequest, options: CallOptions
    ) -> AsyncGenerator[Delta, None]:
        """Continue a plain text prompt piece by piece."""


# name -> "module:Class"; imported only when chosen.
BACKENDS: dict[str, str] = {
    "local": "undertow.services.gateway.backends.local:LocalBackend",
    "openai": "undertow.services.gateway.backends.upstream:UpstreamBackend",
}


class UnknownBackend(GatewayError):
    """Settings name a backend that is not registered."""


def register(name: str, target: str) -> None:
    """Register a backend class by ``"module:Class"`` under ``name``."""
    BACKENDS[name] = target


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    try:
        module_name, _, attr = BACKENDS[name].partition(":")
    except KeyError:
        raise UnknownBackend(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}") from None
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UnknownBackend(f"{BACKENDS[name]} is not a Backend subclass")
    return cls


def create_backend(settings: GatewaySettings) -> Backend:
    """The backend the settings choose, built from them (not started)."""
    cls = backend_class(settings.backend)
    factory = getattr(cls, "from_settings", None)
    if factory is None:
        raise UnknownBackend(f"{cls.__name__} has no from_settings(settings) constructor")
    backend: Backend = factory(settings)
    return backend
