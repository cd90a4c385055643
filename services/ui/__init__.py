"""``undertow ui``: a read-only web dashboard over the warehouse and the registry.

The server (:mod:`.app`) renders small HTML shells; their scripts fetch JSON from ``/api/...``
every few seconds and draw it with plotly.js, served by the app itself (nothing from a CDN).
SQL lives in :mod:`.queries`, the pure shaping of rows into chart series in :mod:`.series`,
and the registry view in :mod:`.registry`.
"""

from undertow.errors import UndertowError


class UIError(UndertowError):
    """The dashboard cannot serve a request: a bad argument, or a source it reads failed."""


__all__ = ["UIError"]
