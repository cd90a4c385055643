"""The closed loop through the CLI: a quality regression is alerted, rolled back, and the
gateway serves the previous version again.

``undertow infra up`` starts the stack in a fresh state directory. The registry gets two
versions of the served model, SmolLM2-135M-Instruct as it ships (version 1) and the same base
with a LoRA adapter (version 2, serving), and a prompt template with the ``production`` label.
``undertow gateway`` serves the registry's active version with the real local model;
``undertow worker`` runs the ingest and policy roles (the policy with a rule that requests a
rollback when too much feedback is bad); ``undertow actions serve`` runs the rollback worker.

The planted regression: users rate version 2's answers badly (through the SDK, with the
version the gateway reported). The test keeps sending traffic until the gateway answers with
version 1, then checks the alert, the action request and its result, the registry and the
events, and prints the seconds from the rollback request to the first answer of version 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import UNDERTOW, Processes
from undertow.infra.process import wait_until
from undertow.infra.stack import LocalStack
from undertow.services.registry.client import RegistryClient
from undertow.services.sdk import SdkConfig, Undertow
from undertow.services.warehouse.client import connect
from undertow.settings import StackSettings

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
APP = "support-bot"
RULES = {
    "version": 1,
    "allowed_lateness": "5s",
    "idle_after": "20s",
    "rules": [
        {
            "name": "bad_feedback",
            "kind": "rate",
            "description": "Too many answers rated badly.",
            "value": "scores.feedback",
            "event_below": 0.5,
            "threshold": 0.4,
            "min_count": 6,
            "window": "2m",
            "step": "5s",
            "clear_after": "5m",
            "filters": {"event_type": "feedback"},
            "group_by": ["app", "environment", "attributes.model_version"],
            "severity": "error",
            "actions": [
                {
                    "type": "rollback",
                    "target": MODEL,
                    "parameters": {"version": "{attributes.model_version}"},
                }
            ],
        }
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_adapter(folder: Path, cache_dir: Path) -> None:
    """A LoRA adapter for SmolLM2 with random (not zero) weights: it changes the answers."""
    from peft import LoraConfig, get_peft_model

    from undertow.services.gateway.backends.local import default_model_source, load_model

    source, gguf = default_model_source()
    lm = load_model(source, gguf, cache_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(lm.model, config).save_pretrained(folder)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*UNDERTOW, *args], env=env, capture_output=True, timeout=120)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, f"undertow {' '.join(args)} failed: {out}"
    return out


@pytest.mark.long(seconds=70)
def test_a_quality_regression_is_rolled_back_and_the_gateway_serves_the_old_version(
    tmp_path: Path,
) -> None:
    home = tmp_path / "state"
    env = {**os.environ, "UNDERTOW_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    cli(env, "infra", "up")
    procs = Processes(env, tmp_path)
    figures: dict[str, Any] = {}
    try:
        stack = LocalStack(StackSettings(home=home)).require()
        warehouse = connect(stack.clickhouse_url, database=StackSettings().clickhouse_database)
        cache = Path.home() / ".cache" / "undertow" / "models"
        adapter = tmp_path / "adapter-v2"
        make_adapter(adapter, cache)
        cli(env, "registry", "push", MODEL, "--base-model", MODEL, "--activate")
        cli(env, "registry", "push", MODEL, "--base-model", MODEL, "--adapter", str(adapter))
        cli(env, "registry", "promote", MODEL, "2")
        cli(
            env,
            "prompts",
            "push",
            "support",
            "--text",
            "You are the support assistant of {product}. Answer in one short sentence.",
            "--label",
            "production",
        )
        listed = cli(env, "registry", "list")
        assert "active" in listed and str(adapter) in listed

        rules = tmp_path / "rules.yaml"
        rules.write_text(json.dumps(RULES))
        fast = {
            "UNDERTOW_WORKER_SESSION_TIMEOUT_S": "6",
            "UNDERTOW_WORKER_HEARTBEAT_INTERVAL_S": "1",
            "UNDERTOW_WORKER_CHECKPOINT_INTERVAL_S": "1",
        }
        procs.start("ingest", ["worker", "--role", "ingest"], **fast)
        procs.start(
            "policy", ["worker", "--role", "policy"], UNDERTOW_WORKER_RULES_FILE=str(rules), **fast
        )
        procs.start("actions", ["actions", "serve", "--worker", "rollback"])
        port = free_port()
        procs.start(
            "gateway",
            ["gateway"],
            UNDERTOW_GATEWAY_PORT=str(port),
            UNDERTOW_GATEWAY_APP_NAME=APP,
            UNDERTOW_GATEWAY_MODEL_CACHE_DIR=str(cache),
        )
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=120)

        def serving() -> dict[str, Any] | None:
            assert procs.alive(), procs.dead()
            try:
                health = http.get("/healthz").json()
            except httpx.TransportError:
                return None
            return health if health.get("model_version") == "2" else None

        health = wait_until(serving, 240, "the gateway serving registry version 2")
        assert health["adapter"] == str(adapter.resolve())

        # The moment the gateway serves version 1, seen from outside: /healthz every 50 ms.
        switched: list[float] = []
        watching = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=base, timeout=10) as probe:
                while not watching.is_set() and not switched:
                    try:
                        if probe.get("/healthz").json().get("model_version") == "1":
                            switched.append(time.time())
                    except httpx.TransportError:
                        pass
                    watching.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sdk = Undertow(SdkConfig(app=APP, bootstrap_servers=stack.bootstrap_servers))
        served: list[tuple[float, str]] = []
        deadline = time.monotonic() + 300
        i = 0
        while time.monotonic() < deadline:
            assert procs.alive(), procs.dead()
            response = http.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "max_tokens": 6,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": f"How do I reset my password? #{i}"}],
                    "undertow": {
                        "prompt_name": "support",
                        "variables": {"product": "Undertow"},
                        "user": f"user-{i % 7}",
                    },
                },
            )
            assert response.status_code == 200, response.text
            version = response.headers["x-undertow-model-version"]
            assert response.headers["x-undertow-prompt-version"] == "1"
            served.append((time.time(), version))
            if version == "1":
                break
            # Users dislike version 2: four answers in five rated 0.
            sdk.record_feedback(
                trace_id=response.headers["x-undertow-trace-id"],
                score=0.0 if i % 5 else 1.0,
                attributes={"model_version": version},
            )
            sdk.flush()
            i += 1
        sdk.close()
        watching.set()
        watcher.join(10)
        assert served and served[-1][1] == "1", (
            f"the gateway never served version 1 ({len(served)} requests); "
            f"policy: {procs.log('policy')[-1500:]} actions: {procs.log('actions')[-1500:]}"
        )
        first_v1 = served[-1][0]

        # The alert, the request it raised and the rollback's answer.
        alerts = warehouse.query(
            "SELECT rule, status, severity, segment FROM alerts FINAL WHERE rule = 'bad_feedback'"
        ).result_rows
        assert ("bad_feedback", "firing", "error") in {a[:3] for a in alerts}, alerts

        def answered() -> list[Any] | None:
            rows = warehouse.query(
                "SELECT phase, action_type, target, parameters, result, ingested_at, "
                "toString(event_id), request_id FROM actions FINAL ORDER BY ingested_at"
            ).result_rows
            return rows if "succeeded" in {r[0] for r in rows} else None

        # The worker publishes the registry change (which the gateway follows within
        # seconds) before its answer reaches the table: wait for the answer, not the gateway.
        actions = wait_until(
            answered, 60, "the rollback's answer in the actions table", interval=0.5
        )
        by_phase = {a[0]: a for a in actions}
        assert set(by_phase) >= {"requested", "started", "succeeded"}, actions
        assert [a[0] for a in actions].count("requested") == 1, actions
        request, done = by_phase["requested"], by_phase["succeeded"]
        assert (request[1], request[2]) == ("rollback", MODEL)
        assert request[3]["version"] == "2" and request[3]["rule"] == "bad_feedback"
        assert done[7] == request[6]
        assert (done[4]["from_version"], done[4]["to_version"]) == ("2", "1")

        state = RegistryClient(stack.bootstrap_servers).load()
        assert state.active_model(MODEL).version == "1"  # type: ignore[union-attr]
        v2 = state.get("model", MODEL, "2")
        assert v2 is not None and v2.metadata["deactivated_reason"] == "rolled_back"
        assert v2.metadata["rolled_back_by"] == request[6]
        health = http.get("/healthz").json()
        assert (health["model_version"], health["adapter"]) == ("1", None)

        # Every completion records the version that answered it.
        def completions() -> dict[str, int] | None:
            rows = warehouse.query(
                "SELECT model_version, count() FROM events FINAL "
                "WHERE app = {app:String} AND event_type = 'completion' GROUP BY model_version",
                parameters={"app": APP},
            ).result_rows
            counts = {str(v): int(n) for v, n in rows}
            return counts if sum(counts.values()) >= len(served) else None

        counts = wait_until(completions, 60, "every completion in the warehouse")
        assert counts == {"2": len(served) - 1, "1": 1}

        # Times: the request and result rows' ingested_at (written as they are published).
        requested = request[5].timestamp()
        assert switched, "the /healthz watcher never saw version 1"
        figures = {
            "requests": len(served),
            "feedback_events": i,
            "request_to_result_s": round(done[5].timestamp() - requested, 3),
            "request_to_gateway_serving_v1_s": round(switched[0] - requested, 3),
            "result_to_gateway_serving_v1_s": round(switched[0] - done[5].timestamp(), 3),
            "request_to_first_v1_answer_s": round(first_v1 - requested, 3),
            "first_request_to_first_v1_answer_s": round(first_v1 - served[0][0], 3),
        }
        print("closed-loop figures:", json.dumps(figures))
        (tmp_path / "figures.json").write_text(json.dumps(figures))
        assert (
            0
            < figures["request_to_gateway_serving_v1_s"]
            <= figures["request_to_first_v1_answer_s"]
        )
    finally:
        procs.stop()
        subprocess.run([*UNDERTOW, "infra", "down"], env=env, capture_output=True, timeout=120)
