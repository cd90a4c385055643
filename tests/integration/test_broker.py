"""The local Kafka broker (``infra/kafka.py``) against a real KRaft node from Maven jars.

One broker per module under a temporary state dir; the jar cache is the real one
(``UNDERTOW_CACHE_DIR`` or ``~/.cache/undertow``) so jars are resolved once per machine.
Every test asks ``broker.start()`` for the running broker, so none depends on another's order.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # stubs omit ConfigResource
    AdminClient,
    ConfigResource,
)

from undertow.infra.kafka import (
    KafkaBroker,
    TopicSpec,
    ensure_topics,
    load_topics,
    topic_partitions,
)
from undertow.infra.process import pid_alive
from undertow.settings import StackSettings

pytestmark = pytest.mark.integration

Record = tuple[bytes, bytes]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A started broker in a fresh state dir, stopped after the module."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the local Kafka broker needs {' and '.join(missing)} on PATH")
    kafka = KafkaBroker(tmp_path_factory.mktemp("state"), StackSettings().cache_dir)
    kafka.start()
    yield kafka
    kafka.stop()


@pytest.fixture(scope="module")
def created(broker: KafkaBroker) -> list[str]:
    """The pipeline's topics, created once on the fresh broker: the names created then."""
    return ensure_topics(broker.start().bootstrap, load_topics())


def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> None:
    """Send ``records`` and wait until the broker acknowledged every one."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            errors.append(error)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "records still unacknowledged after 30 s"
    assert errors == []


def consume(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list[Record]:
    """Read ``count`` records of ``topic`` from the beginning, or what came by the deadline."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            key, value = message.key(), message.value()
            assert key is not None and value is not None
            records.append((key, value))
    finally:
        consumer.close()
    return records


def batch(label: str, count: int = 5) -> list[Record]:
    """``count`` raw records with a unique run id, including bytes that are not UTF-8."""
    run = uuid.uuid4().hex.encode()
    return [(b"%s-%d" % (label.encode(), i), run + bytes([i, 0, 255])) for i in range(count)]


def test_topics_are_created_with_declared_partitions(
    broker: KafkaBroker, created: list[str]
) -> None:
    specs = load_topics()
    assert created == [spec.name for spec in specs]
    assert ensure_topics(broker.start().bootstrap, specs) == []  # idempotent

    metadata = AdminClient({"bootstrap.servers": broker.start().bootstrap}).list_topics(timeout=10)
    partitions = {name: len(topic.partitions) for name, topic in metadata.topics.items()}
    assert {spec.name: partitions.get(spec.name) for spec in specs} == {
        spec.name: spec.partitions for spec in specs
    }


def declare_at_once(
    bootstrap: str, specs: list[TopicSpec], creators: int
) -> tuple[list[list[str]], list[dict[str, int]]]:
    """``creators`` threads call ``ensure_topics(specs)`` together, then list the topics at
    once, as a worker does: what each created, and what each listing showed."""
    start = threading.Barrier(creators)
    created: list[list[str]] = []
    seen: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def declare() -> None:
        try:
            start.wait(timeout=30)
            created.append(ensure_topics(bootstrap, specs))
            seen.append(topic_partitions(bootstrap))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=declare) for _ in range(creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(seen) == creators, errors
    return created, seen


def test_workers_declaring_the_same_topics_at_once_each_return_with_them_listed(
    broker: KafkaBroker,
) -> None:
    """Two workers of a role start together and declare the same topics: each must come back
    with the topics in the cluster's metadata, or its next lookup fails (CI stop 22)."""
    bootstrap = broker.start().bootstrap
    for _round in range(5):
        run = uuid.uuid4().hex[:8]
        specs = [TopicSpec(f"race-{run}-{i}", 3, {}) for i in range(3)]
        created, seen = declare_at_once(bootstrap, specs, creators=4)
        assert sorted(name for names in created for name in names) == [s.name for s in specs]
        for counts in seen:
            assert {s.name: counts.get(s.name) for s in specs} == {s.name: 3 for s in specs}


def test_registry_topic_is_compacted(broker: KafkaBroker, created: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": broker.start().bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, "undertow.registry.v1")
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
    events = ConfigResource(ConfigResource.Type.TOPIC, "undertow.events.v1")
    configs = admin.describe_configs([events])[events].result(timeout=10)
    assert configs["cleanup.policy"].value == "delete"
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)


def test_second_start_returns_the_running_broker(broker: KafkaBroker) -> None:
    first = broker.start()
    again = broker.start()
    assert again.pid == first.pid
    assert again.started_now is False
    assert again.bootstrap == first.bootstrap
    assert broker.status() == again


def test_raw_bytes_round_trip(broker: KafkaBroker, created: list[str]) -> None:
    bootstrap = broker.start().bootstrap
    records = batch("round-trip")
    produce(bootstrap, "undertow.events.v1", records)
    # Six partitions: order holds per key only, so compare as sets.
    assert sorted(consume(bootstrap, "undertow.events.v1", len(records))) == sorted(records)


def test_restart_keeps_data_and_ports(broker: KafkaBroker) -> None:
    before = broker.start()
    topic = TopicSpec("undertow.test.restart", 1, {})
    ensure_topics(before.bootstrap, [topic])
    records = batch("restart")
    produce(before.bootstrap, topic.name, records)

    assert broker.stop() is True
    assert not pid_alive(before.pid)
    after = broker.start()

    assert after.started_now is True
    assert after.pid != before.pid
    assert (after.port, after.controller_port) == (before.port, before.controller_port)
    assert consume(after.bootstrap, topic.name, len(records)) == records


def test_restart_on_new_ports_keeps_data(broker: KafkaBroker) -> None:
    """KRaft with static voters accepts changed ports on a formatted single node."""
    before = broker.start()
    topic = TopicSpec("undertow.test.moved", 1, {})
    ensure_topics(before.bootstrap, [topic])
    records = batch("moved")
    produce(before.bootstrap, topic.name, records)
    broker.stop()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", before.port))
        squatter.listen()
        after = broker.start()

    assert after.started_now is True
    assert after.port != before.port
    assert consume(after.bootstrap, topic.name, len(records)) == records


def test_stop_leaves_no_process(broker: KafkaBroker) -> None:
    info = broker.start()
    assert broker.stop() is True
    assert not pid_alive(info.pid)
    assert broker.status() is None
    assert broker.stop() is False
