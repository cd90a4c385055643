"""The root of every error Undertow raises; each package derives its own from it."""


class UndertowError(Exception):
    """Base class for all Undertow errors."""


class ConfigError(UndertowError):
    """A setting is missing or has a value Undertow cannot use."""
