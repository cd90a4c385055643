"""Errors of the alert delivery side; all derive from :class:`undertow.errors.UndertowError`."""

from __future__ import annotations

from undertow.errors import UndertowError


class AlertsError(UndertowError):
    """Base class for errors raised by ``undertow.services.alerts``."""


class AlertError(AlertsError):
    """A record that is not a usable alert (a field of the wrong type or value)."""


class ChannelError(AlertsError):
    """A channel that cannot be built (unknown name, bad option) or cannot render a notification."""


class SignatureError(AlertsError):
    """A webhook request whose signature headers are missing, stale or do not match the body."""


class SubscriberError(AlertsError):
    """A subscriber cannot go on: Kafka reported a fatal error, or a subscriber thread failed."""
