"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) and the
pipeline's topics.

The broker comes from Maven Central as plain jars (``kafka/pom.xml``), is cached per version
under ``<cache_dir>/kafka-<version>/libs`` and runs as a detached process recorded under
``<state_dir>`` (see ``process.py``), so a second ``undertow infra up`` finds it instead of
starting another. Everything binds to loopback. Topics are declared in ``topics.yaml`` and
created idempotently by :func:`ensure_topics`, which works against any cluster.

Example::

    broker = KafkaBroker(Path(".undertow"), Path.home() / ".cache" / "undertow")
    info = broker.start()
    ensure_topics(info.bootstrap, load_topics())
    broker.stop()
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import re
import secrets
import shutil
import string
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

# The class confluent_kafka.admin documents as NewTopic; its stubs do not re-export it.
from confluent_kafka.cimpl import NewTopic

from undertow.infra import InfraError
from undertow.infra.process import (
    ManagedProcess,
    ProcessRecord,
    bindable,
    free_port,
    pid_alive,
    port_open,
    wait_until,
)

_log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
DEFAULT_TOPICS_FILE = _HERE / "topics.yaml"
_POM = _HERE / "kafka" / "pom.xml"
_LOG4J_CONFIG = _HERE / "kafka" / "log4j2.xml"
_PROPERTIES_TEMPLATE = _HERE / "kafka" / "server.properties"

_VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:[.-][0-9A-Za-z.-]+)?")
_HEAP_RE = re.compile(r"\d+[kKmMgG]?")
_MVN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 120.0
_OUTPUT_TAIL_LINES = 30


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class TopicSpec:
    """One topic as declared in ``topics.yaml``: its name, partition count and topic configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def load_topics(path: Path | None = None) -> list[TopicSpec]:
    """Read topic declarations from ``path`` (default: the packaged ``infra/topics.yaml``).

    The file holds ``topics:``, a list of ``{name, partitions, config}`` entries. Config values
    are turned into the strings Kafka expects (``true``/``false`` for booleans).
    """
    source = path if path is not None else DEFAULT_TOPICS_FILE
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise InfraError(f"cannot read the topics file {source}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InfraError(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("topics"), list):
        raise InfraError(
            f"{source}: expected a mapping with a 'topics' list, got {type(raw).__name__}"
        )
    specs: list[TopicSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw["topics"]):
        spec = _topic_spec(entry, f"{source}: topics[{index}]")
        if spec.name in seen:
            raise InfraError(f"{source}: topic {spec.name!r} is declared twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _topic_spec(entry: object, where: str) -> TopicSpec:
    if not isinstance(entry, dict):
        raise InfraError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - {"name", "partitions", "config"}
    if unknown:
        raise InfraError(
            f"{where}: unknown keys {sorted(unknown)}; expected name/partitions/config"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
        raise InfraError(f"{where}: expected a Kafka topic name ([A-Za-z0-9._-]+), got {name!r}")
    partitions = entry.get("partitions")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise InfraError(f"{where} ({name}): expected partitions >= 1, got {partitions!r}")
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise InfraError(f"{where} ({name}): expected config to be a mapping, got {config!r}")
    return TopicSpec(
        name=name,
        partitions=partitions,
        config={str(key): _config_value(value) for key, value in config.items()},
    )


def _config_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ensure_topics(
    bootstrap: str,
    topics: Sequence[TopicSpec],
    timeout: float = 30,
    replication_factor: int = -1,
) -> list[str]:
    """Create the topics that do not exist yet and return their names, in declaration order.

    Existing topics are left exactly as they are (a partition count lower than declared is
    logged, not changed). ``replication_factor=-1`` takes the broker's default. Returns once
    every topic that was missing shows up in the cluster metadata with its partitions led,
    also one another client created meanwhile, so the caller may use it straight away.
    """
    admin = _admin(bootstrap)
    existing = _list_topics(admin, bootstrap, timeout)
    for spec in topics:
        have = existing.get(spec.name)
        if have is not None and have < spec.partitions:
            _log.warning(
                "topic %s has %d partitions, %d declared; left unchanged",
                spec.name,
                have,
                spec.partitions,
            )
    missing = [spec for spec in topics if spec.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=replication_factor,
                config=dict(spec.config),
            )
            for spec in missing
        ],
        request_timeout=timeout,
        operation_timeout=timeout,
    )
    created: list[str] = []
    failures: list[str] = []
    for spec in missing:
        try:
            futures[spec.name].result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created by someone else since we listed: fine
            failures.append(f"{spec.name}: {error}")
        except TimeoutError as exc:
            failures.append(f"{spec.name}: no answer within {timeout:.0f} s ({exc})")
        else:
            created.append(spec.name)
    if failures:
        raise InfraError(f"could not create topics on {bootstrap}: " + "; ".join(failures))

    # Ours must show every declared partition led; one another client created between our
    # listing and our request (two workers of a role starting together) must show all of
    # its partitions led, whatever it declared. Returning before that would send the caller
    # on to a topic its next metadata request may not list yet.
    ours = {spec.name: spec.partitions for spec in missing if spec.name in created}
    theirs = [spec.name for spec in missing if spec.name not in created]

    def led() -> bool | None:
        # Listed is not enough: until every partition has a leader, reads and offset
        # lookups on a new topic fail with NOT_LEADER_FOR_PARTITION.
        now = _led_partitions(admin, bootstrap, timeout)
        done = all(now.get(n, (0, 0))[1] >= p for n, p in ours.items()) and all(
            0 < now.get(n, (0, 0))[1] == now[n][0] for n in theirs
        )
        return True if done else None

    waited = sorted([*ours, *theirs])
    wait_until(led, timeout, f"leaders for created topics {waited} on {bootstrap}")
    return created


def topic_partitions(bootstrap: str, timeout: float = 30) -> dict[str, int]:
    """Topic name to partition count, as the cluster at ``bootstrap`` reports it now."""
    return _list_topics(_admin(bootstrap), bootstrap, timeout)


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def _list_topics(admin: AdminClient, bootstrap: str, timeout: float) -> dict[str, int]:
    """Topic name to partition count, as the cluster reports it now."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise InfraError(
            f"could not list topics on {bootstrap} within {timeout:.0f} s: {exc}"
        ) from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _led_partitions(
    admin: AdminClient, bootstrap: str, timeout: float
) -> dict[str, tuple[int, int]]:
    """Topic name to its partition count and how many of them have a leader and no error."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise InfraError(
            f"could not list topics on {bootstrap} within {timeout:.0f} s: {exc}"
        ) from exc
    return {
        name: (
            len(topic.partitions),
            sum(1 for p in topic.partitions.values() if p.leader >= 0 and p.error is None),
        )
        for name, topic in metadata.topics.items()
    }


# --------------------------------------------------------------------------- broker


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker: where to reach it and what it keeps where."""

    bootstrap: str
    pid: int
    port: int
    controller_port: int
    data_dir: Path
    log_path: Path
    version: str
    started_now: bool


class KafkaBroker:
    """One local KRaft node whose configuration, data and record live under ``state_dir``.

    ``<state_dir>/kafka/`` holds ``server.properties``, ``ports.json`` and ``data/``;
    ``<state_dir>/kafka.json`` and ``kafka.log`` are the process record and its output.
    """

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        version: str = "4.1.1",
        host: str = "127.0.0.1",
        heap: str = "512m",
        java: str = "java",
        mvn: str = "mvn",
    ) -> None:
        if not _VERSION_RE.fullmatch(version):
            raise InfraError(f"expected a Kafka version like 4.1.1, got {version!r}")
        if not _HEAP_RE.fullmatch(heap):
            raise InfraError(f"expected a JVM heap size like 512m or 1g, got {heap!r}")
        # Absolute: the JVM runs with its cwd in <state_dir>/kafka, Maven in the cache dir.
        self.state_dir = state_dir.absolute()
        self.cache_dir = cache_dir.absolute()
        self.version = version
        self.host = host
        self.heap = heap
        self.java = java
        self.mvn = mvn
        self.home = self.state_dir / "kafka"
        self.data_dir = self.home / "data"
        self.properties_path = self.home / "server.properties"
        self._ports_path = self.home / "ports.json"
        self._process = ManagedProcess("kafka", self.state_dir)

    @property
    def libs_dir(self) -> Path:
        """Where the jars of this version live once resolved."""
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    # ----------------------------------------------------------------- jars

    def resolve_jars(self) -> Path:
        """Download the broker's jars with Maven into :attr:`libs_dir`, once per version.

        A marker file written after a complete run makes later calls return at once; Maven's
        own cache (``~/.m2``) makes a re-resolution after deleting the cache dir fast too.
        """
        root = self.libs_dir.parent
        marker = root / "resolved.json"
        if marker.exists() and self._broker_jar(self.libs_dir).exists():
            return self.libs_dir
        mvn = _require_tool(self.mvn, "Maven (mvn)", "to download the Kafka broker jars")
        _require_tool(self.java, "Java 17+", "to run the Kafka broker")
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / ".lock"):
            if marker.exists() and self._broker_jar(self.libs_dir).exists():
                return self.libs_dir  # another process resolved it while we waited
            staging = root / "libs.partial"
            shutil.rmtree(staging, ignore_errors=True)
            pom = root / "pom.xml"
            shutil.copyfile(_POM, pom)
            argv = [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={self.version}",
            ]
            _log.info("resolving Kafka %s jars into %s", self.version, self.libs_dir)
            started = time.monotonic()
            output = _run_tool(
                argv,
                cwd=root,
                timeout=_MVN_TIMEOUT_S,
                what=f"mvn resolving org.apache.kafka:kafka_2.13:{self.version}",
            )
            if not self._broker_jar(staging).exists():
                raise InfraError(
                    f"mvn finished but {self._broker_jar(staging).name} is not in {staging}; "
                    f"last output:\n{_tail(output)}"
                )
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
            jars = sorted(p.name for p in self.libs_dir.glob("*.jar"))
            marker.write_text(
                json.dumps(
                    {"version": self.version, "resolved_at": time.time(), "jars": jars}, indent=2
                )
            )
            _log.info("resolved %d jars in %.1f s", len(jars), time.monotonic() - started)
        return self.libs_dir

    def _broker_jar(self, libs: Path) -> Path:
        return libs / f"kafka_2.13-{self.version}.jar"

    # ----------------------------------------------------------------- lifecycle

    def status(self) -> BrokerInfo | None:
        """The broker recorded under ``state_dir`` if its process is alive, else None.

        Alive is not the same as ready: :meth:`start` also waits until it answers.
        """
        record = self._process.record()
        if record is None:
            return None
        return self._info(record, started_now=False)

    def start(self, timeout: float = 90) -> BrokerInfo:
        """Return the running broker, or start one and wait up to ``timeout`` s until it answers.

        Resolves the jars first (not counted in ``timeout``), formats the data directory on
        first use and reuses the previous ports when they are still free, so clients keep
        their bootstrap address across restarts. A broker that fails to come up is stopped
        and the error carries the tail of its log.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.state_dir / "kafka.lock"):
            running = self.status()
            if running is not None:
                if running.version != self.version:
                    raise InfraError(
                        f"expected Kafka {self.version} under {self.state_dir}, but Kafka "
                        f"{running.version} is running there (pid {running.pid}); stop it first"
                    )
                self._wait_ready(running, timeout, started_by_us=False)
                return running

            libs = self.resolve_jars()
            try:
                return self._spawn(libs, self._choose_ports(reuse=True), timeout)
            except _PortTakenError as exc:
                # Another program took a port between choosing and binding it: once more.
                _log.warning("%s; retrying on fresh ports", exc.args[0].splitlines()[0])
                return self._spawn(libs, self._choose_ports(reuse=False), timeout)

    def stop(self, timeout: float = 30) -> bool:
        """Stop the recorded broker (SIGTERM, SIGKILL after ``timeout`` s).

        Returns False when none was running. Data stays in ``<state_dir>/kafka/data``.
        """
        if not self.state_dir.is_dir():
            return False
        with _locked(self.state_dir / "kafka.lock"):
            return self._process.stop(timeout)

    # ----------------------------------------------------------------- internals

    def _info(self, record: ProcessRecord, started_now: bool) -> BrokerInfo:
        try:
            host = str(record.details.get("host", self.host))
            port = int(record.ports["kafka"])
            return BrokerInfo(
                bootstrap=f"{host}:{port}",
                pid=record.pid,
                port=port,
                controller_port=int(record.ports["controller"]),
                data_dir=Path(record.details["data_dir"]),
                log_path=self._process.log_path,
                version=str(record.details["version"]),
                started_now=started_now,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InfraError(
                f"{self._process.record_path}: expected kafka/controller ports and "
                f"version/data_dir details, got ports={record.ports} details={record.details}"
            ) from exc

    def _choose_ports(self, reuse: bool) -> tuple[int, int]:
        """The previous ports when ``reuse`` and both are still free, else two fresh ones.

        KRaft accepts changed ports on a formatted single node (static voters are read from
        the config on each start; checked on 4.1.1, see tests/integration/test_broker.py), so
        fresh ports are safe; stable ones are friendlier to clients that kept the address.
        """
        try:
            saved = json.loads(self._ports_path.read_text())
            previous = (int(saved["port"]), int(saved["controller_port"]))
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            previous = None
        if reuse and previous is not None and all(bindable(self.host, p) for p in previous):
            return previous
        port = free_port(self.host)
        controller_port = free_port(self.host)
        while controller_port == port:
            controller_port = free_port(self.host)
        return port, controller_port

    def _write_properties(self, port: int, controller_port: int) -> None:
        template = string.Template(_PROPERTIES_TEMPLATE.read_text())
        # Backslashes are escapes in .properties files.
        data_dir = str(self.data_dir.resolve()).replace("\\", "\\\\")
        text = template.substitute(
            host=self.host, port=port, controller_port=controller_port, data_dir=data_dir
        )
        tmp = self.properties_path.with_suffix(".properties.tmp")
        tmp.write_text(text)
        tmp.replace(self.properties_path)

    def _format_storage(self, libs: Path) -> None:
        """Format the data directory once; a formatted one (meta.properties) is kept."""
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = _new_cluster_id()
        _log.info("formatting %s for cluster %s", self.data_dir, cluster_id)
        _run_tool(
            self._java_argv(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties_path),
            ),
            cwd=self.home,
            timeout=_FORMAT_TIMEOUT_S,
            what=f"kafka StorageTool formatting {self.data_dir}",
        )

    def _java_argv(self, libs: Path, main: str, *args: str) -> list[str]:
        java = _require_tool(self.java, "Java 17+", "to run the Kafka broker")
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _spawn(self, libs: Path, ports: tuple[int, int], timeout: float) -> BrokerInfo:
        """Write the config, format once, start the JVM and wait until it answers."""
        port, controller_port = ports
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_properties(port, controller_port)
        self._ports_path.write_text(json.dumps({"port": port, "controller_port": controller_port}))
        self._format_storage(libs)
        log_offset = _size(self._process.log_path)
        record = self._process.spawn(
            self._java_argv(libs, "kafka.Kafka", str(self.properties_path)),
            ports={"kafka": port, "controller": controller_port},
            details={
                "version": self.version,
                "host": self.host,
                "data_dir": str(self.data_dir),
                "properties": str(self.properties_path),
            },
            cwd=self.home,
        )
        info = self._info(record, started_now=True)
        _log.info("started Kafka %s (pid %d) on %s", self.version, info.pid, info.bootstrap)
        self._wait_ready(info, timeout, started_by_us=True, log_offset=log_offset)
        return info

    def _wait_ready(
        self, info: BrokerInfo, timeout: float, started_by_us: bool, log_offset: int | None = None
    ) -> None:
        """Wait until an admin client sees the broker; fail fast when the process dies.

        On failure a broker we started is stopped, and the error quotes the errors it logged
        since ``log_offset`` (default: the last 256 KiB of the log) and its last lines.
        """

        def answers() -> bool | None:
            if not port_open(self.host, info.port):
                return None  # skip the admin client (and librdkafka's connect noise) until then
            try:
                metadata = _admin(info.bootstrap).list_topics(timeout=2)
            except KafkaException:
                return None
            return True if metadata.brokers else None

        try:
            wait_until(
                answers,
                timeout,
                f"Kafka broker (pid {info.pid}) on {info.bootstrap}",
                interval=0.2,
                alive=lambda: pid_alive(info.pid),
            )
        except InfraError as exc:
            if started_by_us:
                self._process.stop(timeout=10)
            log = _read_from(info.log_path, log_offset)
            message = f"{exc}{_hint(log, self.version)}\n{_log_excerpt(log, info.log_path)}"
            if started_by_us and "Address already in use" in log:
                raise _PortTakenError(message) from exc
            raise InfraError(message) from exc


# --------------------------------------------------------------------------- helpers


def _new_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, as Kafka's own ``random-uuid``.

    One starting with '-' would read as an option on StorageTool's command line.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _require_tool(command: str, what: str, why: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise InfraError(f"{what} is needed {why}, but {command!r} is not on PATH")
    return path


def _run_tool(argv: Sequence[str], cwd: Path, timeout: float, what: str) -> str:
    """Run a short-lived tool to completion; its combined output, or InfraError with a tail."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        raise InfraError(
            f"{what}: expected it to finish within {timeout:.0f} s; last output:\n{_tail(output)}"
        ) from exc
    except OSError as exc:
        raise InfraError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise InfraError(
            f"{what}: expected exit status 0, got {proc.returncode}; last output:\n"
            f"{_tail(proc.stdout)}"
        )
    return proc.stdout


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_LOG_WINDOW_BYTES = 256 * 1024


class _PortTakenError(InfraError):
    """The broker could not bind a port chosen a moment before; a retry may succeed."""


def _tail(text: str, lines: int = _OUTPUT_TAIL_LINES) -> str:
    return "\n".join(_ANSI_RE.sub("", text).splitlines()[-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int | None) -> str:
    """The log from ``offset`` on (None: its last 256 KiB), as text."""
    size = _size(path)
    start = max(0, size - _LOG_WINDOW_BYTES) if offset is None else min(offset, size)
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _log_excerpt(log: str, path: Path, errors: int = 12, tail: int = 12) -> str:
    """The ERROR lines (with the exception line after each) and the last lines of ``log``.

    Kafka logs a long shutdown after a fatal error, so the last lines alone rarely say why.
    """
    lines = log.splitlines()
    picked: list[str] = []
    for index, line in enumerate(lines):
        if "] ERROR " in line or "] FATAL " in line:
            picked.append(line)
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following and not following.startswith("["):
                picked.append(following)
        elif line.startswith("Caused by: "):
            picked.append(line)
    unique = list(dict.fromkeys(picked))[:errors]
    parts = []
    if unique:
        parts.append(f"--- errors in {path} ---\n" + "\n".join(unique))
    parts.append(f"--- last lines of {path} ---\n" + "\n".join(lines[-tail:]))
    return "\n".join(parts)


def _hint(log: str, version: str) -> str:
    """A likely cause for the common failures, read from the broker's log."""
    if "UnsupportedClassVersionError" in log:
        return f" (Kafka {version} needs Java 17 or newer)"
    if "Address already in use" in log:
        return " (a port was taken between choosing and binding it)"
    return ""


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so two ``infra up`` do not race each other."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "DEFAULT_TOPICS_FILE",
    "BrokerInfo",
    "KafkaBroker",
    "TopicSpec",
    "ensure_topics",
    "load_topics",
]
