"""The dashboard's frozen settings, read once from ``UNDERTOW_UI_*`` environment variables.

Built by ``undertow ui`` and passed down; nothing else in the dashboard reads the environment.
The dashboard has no authentication of its own and shows prompt and completion texts, so it
binds to loopback unless ``allow_remote`` is set (put it behind an authenticating proxy then).

>>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
(True, True, False)
"""

from __future__ import annotations

import ipaddress

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve anywhere
        return False


class UISettings(BaseSettings):
    """Where the dashboard listens and how often its pages and registry view refresh."""

    model_config = SettingsConfigDict(env_prefix="UNDERTOW_UI_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8400, ge=0, le=65535)
    allow_remote: bool = Field(default=False, description="allow a non-loopback host")
    refresh_s: float = Field(default=5.0, ge=1.0, le=3600.0, description="page data refresh")
    registry_ttl_s: float = Field(default=5.0, ge=0.0, description="registry reads shared for")
    registry_timeout_s: float = Field(default=15.0, gt=0.0, description="one registry read")
