"""The producer SDK embedded in serving apps: traces and spans to Kafka, never in the way.

>>> from undertow.services.sdk import SdkConfig, Undertow
>>> ut = Undertow(SdkConfig(app="support-bot", bootstrap_servers="localhost:9092",
...                         hash_key="rotate-me"))  # doctest: +SKIP

See ``services/sdk/README.md`` for the tour.
"""

from undertow.services.sdk.client import Undertow
from undertow.services.sdk.config import SdkConfig, SdkConfigError
from undertow.services.sdk.context import (
    TraceContext,
    context_from_headers,
    format_traceparent,
    parse_traceparent,
)
from undertow.services.sdk.openai import instrument_openai
from undertow.services.sdk.redaction import Redactor, luhn_valid
from undertow.services.sdk.stats import SdkStats
from undertow.services.sdk.trace import CompletionScope, PromptScope, RetrievalScope, Trace

__all__ = [
    "CompletionScope",
    "PromptScope",
    "Redactor",
    "RetrievalScope",
    "SdkConfig",
    "SdkConfigError",
    "SdkStats",
    "Trace",
    "TraceContext",
    "Undertow",
    "context_from_headers",
    "format_traceparent",
    "instrument_openai",
    "luhn_valid",
    "parse_traceparent",
]
