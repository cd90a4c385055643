"""The runtime's check of the Faust it runs on, against the installed faust-streaming."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from undertow.streams.runtime import edge
from undertow.streams.runtime.worker import guarded


def app() -> Any:
    import faust

    return faust.App(
        "undertow-edge-test",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        store="memory://",
        web_enabled=False,
    )


def test_the_installed_faust_is_the_pinned_one_and_has_every_attribute_the_runtime_replaces() -> (
    None
):
    edge.check_versions()
    edge.check_edge(app())


def test_another_version_is_refused_naming_what_was_found() -> None:
    found = {"faust-streaming": "0.16.0", "aiokafka": edge.AIOKAFKA_VERSION}
    with pytest.raises(edge.EdgeError, match=r"faust-streaming 0\.16\.0 \(expected 0\.15\.3\)"):
        edge.check_versions(found.get)


def test_a_missing_or_reshaped_attribute_is_refused_by_name() -> None:
    faust_app = app()
    consumer = faust_app.consumer
    thread = consumer._thread
    consumer._thread = SimpleNamespace(  # a consumer thread without _fetch_records
        call_thread=thread.call_thread,
        _ensure_consumer=thread._ensure_consumer,
        seek_to_committed=thread.seek_to_committed,
    )
    consumer.perform_seek = lambda: None  # a plain function where a coroutine is awaited
    with pytest.raises(edge.EdgeError) as raised:
        edge.check_edge(faust_app)
    message = str(raised.value)
    assert "app.consumer._thread._fetch_records is missing" in message
    assert "app.consumer.perform_seek: expected a coroutine function" in message
    assert "app.consumer.seek" not in message  # what is right is not named


def test_a_guarded_timer_skips_while_stopping_or_rebalancing_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    async def tick() -> None:
        calls.append("tick")
        raise ConnectionError("the broker is away")

    state = SimpleNamespace(should_stop=False, rebalancing=True)
    run = guarded(state, "undertow.test", tick)
    asyncio.run(run())
    assert calls == []  # the assignment is changing
    state.rebalancing = False
    with caplog.at_level(logging.ERROR):
        asyncio.run(run())  # raises inside: logged, not raised
    assert calls == ["tick"] and "timer undertow.test failed" in caplog.text
    asyncio.run(guarded(state, "undertow.test", tick, while_rebalancing=True)())
    assert calls == ["tick", "tick"]
    state.should_stop = True
    asyncio.run(run())
    assert calls == ["tick", "tick"]
