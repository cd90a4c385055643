"""Undertow: an event-driven streaming monitor for LLM applications.

The distribution maps the architecture's top-level folders into one namespace:
``undertow.schemas`` (the contract), ``undertow.streams`` (Faust processors),
``undertow.services`` (SDK, gateway, warehouse client, workers) and ``undertow.infra``
(what starts the real components locally).
"""

from undertow.errors import UndertowError

__all__ = ["UndertowError", "__version__"]
__version__ = "0.1.0"
