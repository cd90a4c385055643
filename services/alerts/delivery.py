"""Delivering one notification over HTTP: timeouts, retries with backoff, Retry-After.

:class:`Deliverer` sends what a channel renders and reads the answer through the channel's
:meth:`~undertow.services.alerts.channel.Channel.outcome`:

* **delivered** (2xx as the channel defines it): done;
* **permanent** (a 4xx the receiver will repeat, e.g. PagerDuty's 400): given up at once;
* **retry** (429, 5xx, timeouts, refused or reset connections): tried again after a wait.

Waits grow exponentially with "equal jitter" (half fixed, half random, so retries of many
notifications spread out but never bunch at zero); a 429's Retry-After replaces the backoff
when it is given (capped at ``max_retry_after_s``). Attempts are bounded by ``max_attempts``
*and* by ``deadline_s`` for the whole delivery, so :meth:`Deliverer.deliver` returns in bounded
time with ``exhausted`` when the receiver stays away; the subscriber then pauses its partitions
and tries the same notification again later (an outage holds alerts in Kafka, never drops them).

Each attempt re-renders the request (a webhook signature carries the attempt's time) with
the same body and idempotency key. Logs name the channel, the notification key, the HTTP
status and the target host only: URLs (Slack's holds its token), bodies (PagerDuty's hold the
routing key) and alert text (it may quote a prompt) never reach a log line.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import httpx

from undertow.backoff import Backoff
from undertow.services.alerts.alert import Alert
from undertow.services.alerts.channel import (
    USER_AGENT,
    Channel,
    Notification,
    Outcome,
    as_notification,
)

log = logging.getLogger(__name__)

Result = Literal["delivered", "permanent", "exhausted"]


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one delivery. Defaults suit chat and paging services on the internet."""

    max_attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_multiplier: float = 2.0
    deadline_s: float = 120.0
    request_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_retry_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected >= 1, got {self.max_attempts}")
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("expected 0 < backoff_initial_s <= backoff_max_s")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier: expected >= 1")
        if min(self.deadline_s, self.request_timeout_s, self.connect_timeout_s) <= 0:
            raise ValueError("deadline_s, request_timeout_s and connect_timeout_s must be > 0")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number ``retry`` (1 for the first): equal jitter."""
        return self.waits().delay(retry, rng)

    def waits(self) -> Backoff:
        """The policy's waits as a :class:`~undertow.backoff.Backoff` (equal jitter)."""
        return Backoff(
            self.backoff_initial_s, self.backoff_max_s, self.backoff_multiplier, jitter=0.5
        )


@dataclass(frozen=True)
class Attempt:
    """One try: the HTTP status (None when no answer came), what happened, the wait after."""

    number: int
    status: int | None
    reason: str
    elapsed_s: float
    wait_s: float = 0.0


@dataclass(frozen=True)
class DeliveryResult:
    """How a delivery ended. ``retry_after_s``: the receiver's last asked-for wait, if any."""

    result: Result
    reason: str
    attempts: tuple[Attempt, ...] = field(default=())
    elapsed_s: float = 0.0
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.result == "delivered"


class Deliverer:
    """Delivers notifications of one channel over one HTTP client (connections are reused).

    ``stop`` interrupts a backoff wait (the delivery then ends ``exhausted``). ``clock``,
    ``wall``, ``sleep`` and ``rng`` are injectable for tests; ``sleep(seconds)`` returns True
    when it was interrupted.
    """

    def __init__(
        self,
        channel: Channel,
        policy: RetryPolicy | None = None,
        *,
        client: httpx.Client | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.channel = channel
        self.policy = policy or RetryPolicy()
        self._own_client = client is None
        self.client = client or httpx.Client(
            follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )
        self._stop = stop or threading.Event()
        self._clock = clock
        self._wall = wall
        self._sleep = sleep or self._stop.wait
        self._rng = rng or random.Random()

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def deliver(self, notification: Notification | Alert) -> DeliveryResult:
        """Send until delivered, refused for good, or out of attempts or time."""
        note = as_notification(notification)
        policy = self.policy
        began = self._clock()
        attempts: list[Attempt] = []
        retry_after: float | None = None
        name = self.channel.name
        while True:
            number = len(attempts) + 1
            left = policy.deadline_s - (self._clock() - began)
            outcome = self._attempt(note, max(0.001, min(policy.request_timeout_s, left)))
            elapsed = self._clock() - began
            if outcome.kind != "retry":
                attempts.append(Attempt(number, outcome.status, outcome.reason, elapsed))
                result: Result = "delivered" if outcome.delivered else "permanent"
                level = logging.INFO if outcome.delivered else logging.ERROR
                log.log(
                    level,
                    "%s: %s %d alert(s) [%s] after %d attempt(s): %s",
                    name,
                    result,
                    len(note.alerts),
                    note.key,
                    number,
                    outcome.reason,
                )
                return DeliveryResult(result, outcome.reason, tuple(attempts), elapsed)
            retry_after = outcome.retry_after_s
            if retry_after is not None:
                wait = min(retry_after, policy.max_retry_after_s)
            else:
                wait = policy.backoff(number, self._rng)
            attempts.append(Attempt(number, outcome.status, outcome.reason, elapsed, wait))
            if number >= policy.max_attempts:
                return self._exhausted(note, attempts, began, "out of attempts", retry_after)
            if elapsed + wait >= policy.deadline_s:
                return self._exhausted(note, attempts, began, "out of time", retry_after)
            log.warning(
                "%s: attempt %d for [%s] failed (%s); retrying in %.2f s",
                name,
                number,
                note.key,
                outcome.reason,
                wait,
            )
            if self._sleep(wait):
                return self._exhausted(note, attempts, began, "stopped", retry_after)

    def _attempt(self, note: Notification, timeout_s: float) -> Outcome:
        request = self.channel.request(note, at=self._wall())
        timeout = httpx.Timeout(timeout_s, connect=min(self.policy.connect_timeout_s, timeout_s))
        try:
            response = self.client.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                content=request.body,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            return Outcome(
                "retry", f"{type(exc).__name__} after {timeout_s:.1f} s at {request.target}"
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Outcome("permanent", f"{type(exc).__name__} for {request.target}")
        except httpx.TransportError as exc:
            return Outcome("retry", f"{type(exc).__name__} at {request.target}")
        return self.channel.outcome(response.status_code, response.headers, response.content)

    def _exhausted(
        self,
        note: Notification,
        attempts: list[Attempt],
        began: float,
        why: str,
        retry_after: float | None,
    ) -> DeliveryResult:
        last = attempts[-1].reason if attempts else ""
        reason = f"{why} after {len(attempts)} attempt(s); last: {last}"
        log.warning("%s: giving up on [%s] for now: %s", self.channel.name, note.key, reason)
        return DeliveryResult(
            "exhausted", reason, tuple(attempts), self._clock() - began, retry_after
        )
