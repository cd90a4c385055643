"""Bearer API keys, compared in constant time.

>>> keys = ApiKeys(("k1", "k2"))
>>> keys.check("Bearer k2"), keys.check("Bearer nope"), keys.check(None)
(True, False, False)
>>> ApiKeys(()).check(None)  # no keys configured: authentication is off
True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class ApiKeys:
    """The keys a gateway accepts; empty means every request is let through.

    Keys are held as SHA-256 digests and each candidate is compared against every key with
    ``hmac.compare_digest``, so neither a key's length nor its position leaks through timing.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(_digest(k) for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> bool:
        """True when authentication is off or ``authorization`` is ``Bearer <known key>``."""
        if not self._digests:
            return True
        token = bearer_token(authorization)
        if token is None:
            return False
        candidate = _digest(token)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
