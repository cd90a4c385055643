"""The action service for real: requests on the session's Kafka broker, answers in the real
ClickHouse, registry changes on the registry topic.

* rollback: carried out once; the same request delivered again is answered "already"; a second
  request about the same bad version is skipped by the registry's state; a request for a model
  with no known-good version fails with the reason;
* promote: a prompt label moves;
* fine_tune: on a tiny GPT-2 built here, a run whose held-out loss falls registers its adapter
  as a candidate; a run that cannot improve (learning rate 0) registers nothing;
* an undecodable record becomes a dead letter and the service keeps going.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from tests.tiny_models import ALL_LINEAR, ANIMALS, COLOURS, tiny_gpt2, tiny_tokenizer
from undertow.infra.process import wait_until
from undertow.infra.stack import StackInfo
from undertow.schemas.codec import AvroCodec
from undertow.schemas.events import action
from undertow.schemas.topics import ACTIONS, DEADLETTER
from undertow.services.actions.service import run_service
from undertow.services.actions.settings import ActionSettings
from undertow.services.bus import end_offsets, publish, read_range
from undertow.services.registry.client import RegistryClient
from undertow.services.registry.state import promote_model, push_model, push_prompt
from undertow.services.warehouse.client import connect

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
RUN = uuid.uuid4().hex[:6]
MODEL = f"actions-test-model-{RUN}"
TINY = f"tiny-model-{RUN}"
# 48 question/answer pairs in a fixed frame, straight from ClickHouse (the fine_tune `sql`
# parameter): the tiny model learns the frame quickly.
TRAINING_SQL = (
    "SELECT concat('what colour is the ', c, ' ', a, '?') AS prompt, "
    "concat('the ', c, ' ', a, ' is ', c, ', of course.') AS completion "
    f"FROM (SELECT arrayJoin({ANIMALS}) AS a) AS animals "
    f"CROSS JOIN (SELECT arrayJoin({COLOURS}) AS c) AS colours"
)


def now() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def warehouse(stack: StackInfo, database: str) -> Client:
    return connect(stack.clickhouse_url, database=database)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 and its tokenizer, saved as a plain model folder."""
    tokenizer = tiny_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def service(
    stack: StackInfo, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, int]]]:
    """The action service on a thread; yields its counts (filled in when it stops)."""
    settings = ActionSettings(
        group_prefix=f"actions-test-{RUN}",
        finetune_output_dir=tmp_path_factory.mktemp("adapters"),
        finetune_max_seconds=240,
    )
    stop = threading.Event()
    counts: dict[str, dict[str, int]] = {}

    def run() -> None:
        counts.update(
            run_service(
                settings,
                stop,
                bootstrap=stack.bootstrap_servers,
                warehouse=lambda: connect(stack.clickhouse_url, database=database),
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield counts
    stop.set()
    thread.join(60)


def request(action_type: str, target: str, **parameters: str) -> dict[str, Any]:
    return action(action_type=action_type, target=target, reason="test", parameters=parameters)


def send(stack: StackInfo, *records: dict[str, Any]) -> None:
    publish(
        stack.bootstrap_servers,
        ACTIONS,
        [(str(r["target"]).encode(), CODEC.encode("action", r)) for r in records],
    )


def answers(warehouse: Client, request_id: str, count: int = 2) -> dict[str, dict[str, Any]] | None:
    rows = warehouse.query(
        "SELECT phase, reason, result FROM actions FINAL WHERE request_id = {id:String}",
        parameters={"id": request_id},
    ).result_rows
    out = {phase: {"reason": reason, "result": result} for phase, reason, result in rows}
    return out if len(out) >= count else None


def test_rollback_is_carried_out_once(
    stack: StackInfo, warehouse: Client, service: dict[str, Any]
) -> None:
    registry = RegistryClient(stack.bootstrap_servers)
    for adapter in (None, "/adapters/v2"):
        state = registry.load()
        registry.publish(
            push_model(state, MODEL, base_model="base", adapter_path=adapter, now=now())
        )
        version = str(len(registry.load().versions("model", MODEL)))
        registry.publish(promote_model(registry.load(), MODEL, version, now=now()))
    first = request("rollback", MODEL, version="2")
    send(stack, first)
    done = wait_until(lambda: answers(warehouse, first["event_id"]), 60, "the rollback's answer")
    assert set(done) == {"started", "succeeded"}
    assert (
        done["succeeded"]["result"]["from_version"],
        done["succeeded"]["result"]["to_version"],
    ) == ("2", "1")
    assert registry.load().active_model(MODEL).version == "1"  # type: ignore[union-attr]
    # The same request again (a redelivery) and a second alert about version 2.
    again = request("rollback", MODEL, version="2")
    send(stack, first, again)
    skipped = wait_until(lambda: answers(warehouse, again["event_id"]), 60, "the second answer")
    assert "skipped" in skipped and "already rolled back" in skipped["skipped"]["reason"]
    assert registry.load().active_model(MODEL).version == "1"  # type: ignore[union-attr]
    rows = warehouse.query(
        "SELECT count() FROM actions FINAL WHERE request_id = {id:String}",
        parameters={"id": first["event_id"]},
    ).result_rows
    assert rows[0][0] == 2  # started and succeeded, once each

    # The registry's mirror in ClickHouse (written by the service) shows the same state.
    def mirrored() -> dict[str, tuple[str, str]] | None:
        rows = warehouse.query(
            "SELECT version, status, metadata['deactivated_reason'] FROM registry FINAL "
            "WHERE kind = 'model' AND name = {name:String}",
            parameters={"name": MODEL},
        ).result_rows
        found = {v: (status, why) for v, status, why in rows}
        return found if found.get("2", ("",))[0] == "retired" else None

    mirror = wait_until(mirrored, 60, "the registry mirrored into ClickHouse")
    assert mirror == {"1": ("active", ""), "2": ("retired", "rolled_back")}
    # Nothing left to return to: a failure that says why.
    last = request("rollback", MODEL)
    send(stack, last)
    failed = wait_until(lambda: answers(warehouse, last["event_id"]), 60, "the failure")
    assert "no known-good version" in failed["failed"]["reason"]


def test_promote_moves_a_prompt_label(
    stack: StackInfo, warehouse: Client, service: dict[str, Any]
) -> None:
    registry = RegistryClient(stack.bootstrap_servers)
    name = f"prompt-{RUN}"
    registry.publish(push_prompt(registry.load(), name, "one", labels=["production"], now=now()))
    registry.publish(push_prompt(registry.load(), name, "two", now=now()))
    ask = request("promote", name, kind="prompt", version="2", label="production")
    send(stack, ask)
    done = wait_until(lambda: answers(warehouse, ask["event_id"]), 60, "the promote's answer")
    assert "succeeded" in done, done
    assert registry.load().prompt(name).version == "2"


@pytest.mark.long(seconds=30)
def test_a_fine_tune_registers_an_adapter_only_when_it_improved(
    stack: StackInfo, warehouse: Client, service: dict[str, Any], tiny_base: Path
) -> None:
    registry = RegistryClient(stack.bootstrap_servers)
    registry.publish(push_model(registry.load(), TINY, base_model=str(tiny_base), now=now()))
    registry.publish(promote_model(registry.load(), TINY, "1", now=now()))
    common = {
        "app": "tiny-app",
        "sql": TRAINING_SQL,
        "target_modules": ",".join(ALL_LINEAR),
        "max_steps": "40",
        "batch_size": "8",
        "seed": "1",
    }
    good = request("fine_tune", TINY, learning_rate="0.01", **common)
    send(stack, good)
    done = wait_until(lambda: answers(warehouse, good["event_id"]), 400, "the fine-tune's answer")
    assert "succeeded" in done, done
    result = done["succeeded"]["result"]
    assert float(result["loss_after"]) < float(result["loss_before"])
    assert result["registered_version"] == "2" and int(result["steps"]) == 40
    assert int(result["train_examples"]) + int(result["held_out_examples"]) == 48
    candidate = registry.load().get("model", TINY, "2")
    assert candidate is not None and candidate.status == "candidate"
    assert candidate.adapter_path == result["adapter_path"]
    assert (Path(candidate.adapter_path) / "adapter_config.json").is_file()
    assert registry.load().active_model(TINY).version == "1"  # type: ignore[union-attr]

    frozen = request("fine_tune", TINY, learning_rate="0", **common)
    send(stack, frozen)
    done = wait_until(lambda: answers(warehouse, frozen["event_id"]), 400, "the second answer")
    assert "skipped" in done, done
    assert done["skipped"]["result"]["improved"] == "false"
    assert done["skipped"]["result"]["adapter_path"] == ""
    assert [v.version for v in registry.load().versions("model", TINY)] == ["1", "2"]


def test_an_undecodable_request_is_dead_lettered_and_the_service_goes_on(
    stack: StackInfo, warehouse: Client, service: dict[str, Any]
) -> None:
    before = end_offsets(stack.bootstrap_servers, DEADLETTER)
    publish(stack.bootstrap_servers, ACTIONS, [(b"junk", b"not an action record")])

    def letters() -> list[dict[str, Any]] | None:
        ends = end_offsets(stack.bootstrap_servers, DEADLETTER)
        found = [
            CODEC.decode(r.value).record
            for r in read_range(stack.bootstrap_servers, DEADLETTER, before, ends)
        ]
        mine = [d for d in found if str(d.get("processor", "")).startswith("actions.")]
        return mine if len(mine) >= 3 else None  # one per action type's consumer group

    found = wait_until(letters, 60, "dead letters from the action consumers")
    assert {d["processor"] for d in found} == {
        "actions.rollback",
        "actions.promote",
        "actions.fine_tune",
    }
    # Still serving: a promote after the junk is answered.
    registry = RegistryClient(stack.bootstrap_servers)
    name = f"after-junk-{RUN}"
    registry.publish(push_prompt(registry.load(), name, "x", labels=["production"], now=now()))
    registry.publish(push_prompt(registry.load(), name, "y", now=now()))
    ask = request("promote", name, kind="prompt", version="2", label="production")
    send(stack, ask)
    assert wait_until(lambda: answers(warehouse, ask["event_id"]), 60, "an answer after the junk")
