"""The gateway following the registry for real: SmolLM2 on CPU, the session's Kafka broker,
registry changes published as the CLI publishes them.

Checked: the served model version follows promotions and rollbacks (a LoRA adapter loaded and
dropped between generations); prompts resolve by label and by A/B variant, sticky per user;
what was served is in the response headers and in the events on the topic.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import event_body, event_type
from undertow.schemas.topics import EVENTS
from undertow.services.bus import end_offsets, read_range
from undertow.services.gateway.app import create_app
from undertow.services.gateway.backends.local import (
    LocalBackend,
    default_model_source,
    load_model,
)
from undertow.services.gateway.server import ServerThread, serving_view
from undertow.services.gateway.settings import GatewaySettings
from undertow.services.registry.client import RegistryClient
from undertow.services.registry.state import (
    label_prompt,
    promote_model,
    push_model,
    push_prompt,
    rollback_model,
    start_experiment,
)
from undertow.services.sdk import SdkConfig, Undertow

pytestmark = pytest.mark.integration

SERVED = "SmolLM2-135M-Instruct"
REGISTERED = "registry-test-model"  # the registry name this gateway follows
APP = "gateway-registry-test"


def now() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def registry(stack: StackInfo) -> RegistryClient:
    return RegistryClient(stack.bootstrap_servers)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for SmolLM2 with random weights (so it changes the answers)."""
    from peft import LoraConfig, get_peft_model

    settings = GatewaySettings()
    source, gguf = default_model_source()
    lm = load_model(source, gguf, settings.model_cache_dir)
    folder = tmp_path_factory.mktemp("adapter") / "v2"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(lm.model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gateway(stack: StackInfo, registry: RegistryClient, adapter: Path) -> Iterator[ServerThread]:
    state = registry.load()
    records = push_model(state, REGISTERED, base_model=SERVED, now=now())
    registry.publish(records)
    state = registry.load()
    registry.publish(promote_model(state, REGISTERED, "1", now=now()))
    state = registry.load()
    registry.publish(
        push_model(state, REGISTERED, base_model=SERVED, adapter_path=str(adapter), now=now())
    )
    state = registry.load()
    registry.publish(
        push_prompt(state, "greeter", "Greet {name} warmly.", labels=["production"], now=now())
    )
    settings = GatewaySettings(
        registry_model=REGISTERED, default_temperature=0.0, default_max_tokens=4, app_name=APP
    )
    backend = LocalBackend.from_settings(settings)
    sdk = Undertow(
        SdkConfig(app=APP, bootstrap_servers=stack.bootstrap_servers, builtin_redactions=())
    )
    view = serving_view(settings, backend, stack.bootstrap_servers)
    assert view is not None
    with sdk, ServerThread(create_app(settings, backend, sdk, view)) as server:
        yield server


def ask(gateway: ServerThread, user: str = "u", **undertow: Any) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json={
            "model": SERVED,
            "messages": [{"role": "user", "content": "Hello"}],
            "undertow": {"user": user, **undertow},
        },
        timeout=120,
    )


def serving(gateway: ServerThread, version: str) -> dict[str, Any] | None:
    health = httpx.get(gateway.url + "/healthz", timeout=10).json()
    return health if health["model_version"] == version else None


def test_the_served_version_follows_promotion_and_rollback(
    gateway: ServerThread, registry: RegistryClient, adapter: Path
) -> None:
    assert serving(gateway, "1") is not None  # the active version when the gateway started
    assert ask(gateway).headers["x-undertow-model-version"] == "1"
    registry.publish(promote_model(registry.load(), REGISTERED, "2", now=now()))
    health = wait_until(lambda: serving(gateway, "2"), 60, "the gateway serving version 2")
    assert health["adapter"] == str(adapter)
    assert ask(gateway).headers["x-undertow-model-version"] == "2"
    plan = rollback_model(registry.load(), REGISTERED, now=now(), expected_version="2")
    registry.publish(plan.records)
    health = wait_until(lambda: serving(gateway, "1"), 60, "the gateway serving version 1 again")
    assert health["adapter"] is None
    assert ask(gateway).headers["x-undertow-model-version"] == "1"


def test_prompts_resolve_by_label_then_by_sticky_ab_variant(
    gateway: ServerThread, registry: RegistryClient, stack: StackInfo
) -> None:
    before = end_offsets(stack.bootstrap_servers, EVENTS)
    first = ask(gateway, prompt_name="greeter", variables={"name": "Ada"})
    assert first.status_code == 200, first.text
    assert first.headers["x-undertow-prompt-version"] == "1"
    state = registry.load()
    registry.publish(push_prompt(state, "greeter", "Welcome {name}, briefly.", now=now()))
    registry.publish(label_prompt(registry.load(), "greeter", "2", "canary", now=now()))
    canary = wait_until(
        lambda: (
            r
            if (
                r := ask(
                    gateway, prompt_name="greeter", prompt_label="canary", variables={"name": "Bo"}
                )
            ).headers.get("x-undertow-prompt-version")
            == "2"
            else None
        ),
        60,
        "the canary label resolving to version 2",
    )
    assert canary.status_code == 200
    registry.publish(
        start_experiment(
            registry.load(), "greeter", "greeting-tone", {"a": "1", "b": "2"}, now=now()
        )
    )

    def variant_of(user: str) -> tuple[str, str] | None:
        r = ask(gateway, user=user, prompt_name="greeter", variables={"name": "Cy"})
        assert r.status_code == 200, r.text
        variant = r.headers.get("x-undertow-ab-variant")
        return (variant, r.headers["x-undertow-prompt-version"]) if variant else None

    wait_until(lambda: variant_of("user-0"), 60, "the A/B test taking effect")
    seen = {f"user-{i}": variant_of(f"user-{i}") for i in range(12)}
    assert {v for v in seen.values() if v} == {("a", "1"), ("b", "2")}, seen
    assert all(variant_of(user) == chosen for user, chosen in list(seen.items())[:4])  # sticky
    missing = ask(gateway, prompt_name="greeter")
    assert missing.status_code == 400 and "needs variables ['name']" in missing.text
    unknown = ask(gateway, prompt_name="no-such-prompt")
    assert unknown.status_code == 400 and "no prompt named 'no-such-prompt'" in unknown.text

    # The events say which prompt version and variant each request got.
    codec = AvroCodec()
    ends = end_offsets(stack.bootstrap_servers, EVENTS)
    records = [
        codec.decode(r.value).record
        for r in read_range(stack.bootstrap_servers, EVENTS, before, ends)
    ]
    completions = [r for r in records if r["app"] == APP and event_type(r) == "completion"]
    tagged = [
        (r["attributes"].get("ab.variant"), event_body(r)["prompt_version"])
        for r in completions
        if r["attributes"].get("ab.test") == "greeting-tone"
    ]
    assert set(tagged) == {("a", "1"), ("b", "2")}
    prompts = [r for r in records if r["app"] == APP and event_type(r) == "prompt"]
    system = [event_body(r)["messages"][0] for r in prompts]
    assert {"role": "system", "content": "Greet Ada warmly."} in system
