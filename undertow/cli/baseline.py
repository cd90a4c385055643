"""``undertow baseline``: build drift baselines from a period of scored traffic, store them in
ClickHouse where every drift worker finds them, and list, show, activate, export, import.

ClickHouse is the one given by ``--clickhouse-url``/``--database``, else by
``UNDERTOW_CLICKHOUSE_URL``/``UNDERTOW_CLICKHOUSE_DATABASE``, else the running local stack's
(as ``undertow sql``). Errors are :class:`~undertow.errors.UndertowError`; ``undertow``'s
entry point prints them as one line and exits 1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from undertow.cli.console import console
from undertow.settings import StackSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from undertow.services.warehouse.baselines import BaselineInfo, BaselineStore
    from undertow.streams.drift.baseline import Baseline, CalibrationConfig

baseline_app = typer.Typer(
    help="Drift baselines: build, list, activate, export.", no_args_is_help=True
)
# The library's defaults (calibration.DEFAULT_EVENTS and DEFAULT_TARGET_RATE,
# history.DEFAULT_LIMIT), written out so that loading the command line does not import numpy,
# river and the drift package; tests/integration/test_baseline_store.py checks they agree.
CALIBRATION_EVENTS = 1_000_000
TARGET_RATE = 1e-5
ROW_LIMIT = 200_000

ClickHouseUrl = Annotated[
    str | None,
    typer.Option(
        "--clickhouse-url",
        help="ClickHouse HTTP URL (default: UNDERTOW_CLICKHOUSE_URL, else the local stack's)",
    ),
]
Database = Annotated[
    str | None,
    typer.Option("--database", help="ClickHouse database (default: UNDERTOW_CLICKHOUSE_DATABASE)"),
]
VersionOption = Annotated[
    str | None, typer.Option("--version", help="a stored version (default: the active one)")
]


def _store(url: str | None, database: str | None) -> tuple[BaselineStore, str]:
    """The store on the chosen warehouse, and the database's name (for messages)."""
    from undertow.services.warehouse.baselines import BaselineStore
    from undertow.services.warehouse.client import connect

    settings = StackSettings()
    if url is None:
        from undertow.infra.stack import LocalStack

        url = settings.clickhouse_url or LocalStack(settings).require().clickhouse_url
    db = database or settings.clickhouse_database
    client: Client = connect(
        url,
        database=db,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value(),
    )
    return BaselineStore(client), db


def _file_name(baseline: Baseline) -> str:
    """``app=chat__model=smollm2__prompt=v3.<version>.json``: the key, safe as a file name."""
    safe = re.sub(r"[^A-Za-z0-9=%.,+_-]+", "_", baseline.segment_key.replace("/", "__"))
    return f"{safe}.{baseline.version}.json"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "-"


def _calibrated(baseline: Baseline) -> str:
    if not baseline.calibration:
        return "off"
    met = sum(c.met for c in baseline.calibration.values())
    return f"{len(baseline.calibration)} ({met} met)"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _source(source: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(source.items())) or "-"


def _info_table(infos: Sequence[BaselineInfo], title: str) -> Table:
    table = Table(title=title)
    table.add_column("segment", overflow="fold")
    table.add_column("version", min_width=16)
    for col in ("active", "created", "activated", "rows"):
        table.add_column(col)
    table.add_column("source", overflow="fold")
    for i in infos:
        table.add_row(
            i.segment,
            i.version,
            "yes" if i.active else "",
            _when(i.created_at),
            _when(i.activated_at),
            str(i.rows),
            _source(i.source),
        )
    return table


@dataclass(frozen=True)
class _Scope:
    """Which rows ``build`` reads: of these apps (all when empty) and environment, with or
    without their text."""

    apps: Sequence[str]
    environment: str | None
    with_text: bool

    def describe(self) -> str:
        parts = [f"app {', '.join(self.apps)}"] if self.apps else []
        parts += [f"environment {self.environment}"] if self.environment is not None else []
        return f" ({'; '.join(parts)})" if parts else ""

    def source(self) -> dict[str, str]:
        out = {"apps": ",".join(self.apps)} if self.apps else {}
        return out | ({"environment": self.environment} if self.environment is not None else {})


def _rows_of_file(path: Path, scope: _Scope) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """The file's rows in scope, the baseline's source and the rows described (for errors)."""
    from undertow.services.warehouse.history import rows_from_file

    rows = [
        row if scope.with_text else {k: v for k, v in row.items() if k != "text"}
        for row in rows_from_file(path)
        if (not scope.apps or row["app"] in scope.apps)
        and (scope.environment is None or row.get("environment") == scope.environment)
    ]
    return rows, {"file": str(path), **scope.source()}, f"in {path}{scope.describe()}"


def _rows_of_period(
    store: BaselineStore, db: str, since: str, until: str, scope: _Scope, limit: int
) -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """The warehouse's scored rows of the period in scope, the source and the description."""
    from undertow.services.warehouse.history import parse_time, scored_rows

    now = datetime.now(UTC)
    start, end = parse_time(since, now=now), parse_time(until, now=now)
    with console.status("Reading scored events..."):
        rows = scored_rows(
            store.client,
            since=start,
            until=end,
            apps=scope.apps,
            environment=scope.environment,
            limit=limit,
            with_text=scope.with_text,
        )
    if len(rows) >= limit:
        console.print(
            f"the period has {limit} rows or more: built from a seeded sample of {limit} "
            "(raise --limit for more)"
        )
    span = {"since": start.isoformat(), "until": end.isoformat()}
    source = {"table": f"{db}.scores", **span, **scope.source()}
    return rows, source, f"in {db}.scores from {span['since']} to {span['until']}{scope.describe()}"


def _build_segments(
    rows: Sequence[dict[str, Any]],
    calibration: CalibrationConfig | None,
    source: Mapping[str, str],
    what: str,
    skip_small: bool,
) -> list[tuple[Baseline, int, float]]:
    """A baseline per segment of ``rows``, with its row count and seconds taken. Fails (or
    skips, with ``skip_small``) segments too small for one; fails when nothing is left."""
    from undertow.streams.drift.base import DriftError
    from undertow.streams.drift.baseline import BaselineConfig, build_baselines
    from undertow.streams.drift.segment import segment_key, segment_of

    if not rows:
        raise DriftError(f"no scored events {what}")
    config = BaselineConfig()
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(segment_key(segment_of(row)), []).append(row)
    small = {key: len(group) for key, group in groups.items() if len(group) < config.min_rows}
    if small and not skip_small:
        listed = ", ".join(f"{key!r} ({n})" for key, n in sorted(small.items()))
        raise DriftError(
            f"segments with fewer than {config.min_rows} rows {what}: {listed}; "
            "widen the period, narrow --app/--environment, or pass --skip-small"
        )
    built: list[tuple[Baseline, int, float]] = []
    for key, group in sorted(groups.items()):
        if key in small:
            console.print(f"skipped {key}: {len(group)} rows", highlight=False)
            continue
        began = time.perf_counter()
        with console.status(f"Building {key} ({len(group)} rows)..."):
            (baseline,) = build_baselines(
                group, config=config, calibration=calibration, source=source
            ).values()
        if not baseline.embeddings and not baseline.scalars:
            if skip_small:
                console.print(f"skipped {key}: no event type or quantity has enough rows")
                continue
            raise DriftError(
                f"segment {key!r} has {len(group)} rows {what} but no event type or quantity "
                f"with {config.min_rows}; widen the period or pass --skip-small"
            )
        built.append((baseline, len(group), time.perf_counter() - began))
    if not built:
        raise DriftError(f"no segment had enough rows {what}")
    return built


@baseline_app.command("build")
def build(
    since: Annotated[
        str | None,
        typer.Option(help="start of the period: ISO datetime, or a duration before now (7d, 1h)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="end of the period (ISO, or a duration; default now)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", exists=True, dir_okay=False, help="scored events as JSON Lines instead"
        ),
    ] = None,
    apps: Annotated[
        list[str] | None, typer.Option("--app", help="only this app (repeatable)")
    ] = None,
    environment: Annotated[str | None, typer.Option(help="only this environment")] = None,
    with_text: Annotated[
        bool,
        typer.Option(
            "--with-text/--no-text",
            help="keep example texts of each topic (prompt text is user data: off by default)",
        ),
    ] = False,
    calibration_events: Annotated[
        int, typer.Option(min=1000, help="stable values replayed to calibrate each detector")
    ] = CALIBRATION_EVENTS,
    target_rate: Annotated[
        float, typer.Option(help="false alarms per event the calibration allows")
    ] = TARGET_RATE,
    no_calibration: Annotated[
        bool, typer.Option("--no-calibration", help="keep the detectors' configured settings")
    ] = False,
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="make the new baselines active")
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", file_okay=False, help="also write each baseline here"),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="most rows read (past it, a seeded sample of the period)")
    ] = ROW_LIMIT,
    skip_small: Annotated[
        bool, typer.Option("--skip-small", help="leave out segments with too few rows")
    ] = False,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Build a baseline per segment from a period of scored traffic (or a file) and store it.

    Segments are (app, model, prompt version).
    A segment with fewer rows than a baseline needs fails the build, unless --skip-small.
    """
    from undertow.streams.drift.baseline import CalibrationConfig

    if (since is None) == (file is None) or (file is not None and until is not None):
        raise typer.BadParameter("give either --since [--until] (a period) or --file")
    if not 0.0 < target_rate < 1.0:
        raise typer.BadParameter(f"--target-rate must be between 0 and 1, got {target_rate}")
    store, db = _store(clickhouse_url, database)
    scope = _Scope(apps or (), environment, with_text)
    if file is not None:
        rows, source, what = _rows_of_file(file, scope)
    else:
        assert since is not None
        rows, source, what = _rows_of_period(store, db, since, until or "now", scope, limit)
    calibration = (
        None
        if no_calibration
        else CalibrationConfig(events=calibration_events, target_rate=target_rate)
    )
    built = _build_segments(rows, calibration, source, what, skip_small)

    table = Table(title=f"Baselines stored in {db}.baselines" + ("" if activate else " (inactive)"))
    table.add_column("segment", overflow="fold")
    table.add_column("version", min_width=16)
    for col in ("rows", "event types", "topics", "calibrated", "seconds"):
        table.add_column(col)
    for baseline, count, seconds in built:
        store.save(baseline, source=source, activate=activate, rows=count)
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            baseline.save(output / _file_name(baseline))
        table.add_row(
            baseline.segment_key,
            baseline.version,
            str(count),
            _counts({t: p.count for t, p in baseline.embeddings.items()}),
            _counts({t: len(p.topics) for t, p in baseline.embeddings.items()}),
            _calibrated(baseline),
            f"{seconds:.1f}",
        )
    console.print(table)
    if output is not None:
        console.print(f"written to {output}", highlight=False)


@baseline_app.command("list")
def list_baselines(
    segment: Annotated[str | None, typer.Option(help="only this segment key")] = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """List the stored baselines, every version, marking the active one of each segment."""
    store, db = _store(clickhouse_url, database)
    infos = store.list(segment)
    console.print(_info_table(infos, f"Baselines in {db}.baselines"))
    console.print(f"{len(infos)} versions, {sum(i.active for i in infos)} active")


@baseline_app.command("show")
def show(
    segment: Annotated[str, typer.Argument(help="segment key, e.g. app=chat/model=m/prompt=v1")],
    version: VersionOption = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Summarise a baseline: source, embeddings, topics, quantities, calibrated detectors."""
    store, _ = _store(clickhouse_url, database)
    info = store.info(segment, version)
    baseline = store.get(segment, info.version)
    head = Table.grid(padding=(0, 2))
    head.add_row("segment", info.segment)
    head.add_row("version", info.version + (" (active)" if info.active else ""))
    head.add_row("created", _when(info.created_at))
    head.add_row("activated", _when(info.activated_at))
    head.add_row("rows", str(info.rows))
    head.add_row("embedding model", info.embedding_model or "-")
    head.add_row("source", _source(info.source))
    console.print(head)
    embeddings = Table("event type", "count", "dim", "topics", "largest topics", title="Embeddings")
    for name, profile in sorted(baseline.embeddings.items()):
        largest = "; ".join(f"{t.label} ({t.share:.0%})" for t in profile.topics[:3])
        embeddings.add_row(
            name, str(profile.count), str(profile.dim), str(len(profile.topics)), largest
        )
    console.print(embeddings)
    scalars = Table("quantity", "count", "p50", "p99", title="Quantities")
    for name, sp in sorted(baseline.scalars.items()):
        s = sp.summary
        scalars.add_row(name, str(s.count), f"{s.quantile(0.5):.4g}", f"{s.quantile(0.99):.4g}")
    console.print(scalars)
    calibration = Table(
        "stream", "detector", "setting", "false alarms", "met", title="Calibrated detectors"
    )
    for stream, c in sorted(baseline.calibration.items()):
        calibration.add_row(
            stream,
            c.detector,
            f"{c.parameter}={c.value:g}",
            f"{c.alarms} in {c.events}",
            "yes" if c.met else "no",
        )
    console.print(calibration)


@baseline_app.command("activate")
def activate_baseline(
    segment: Annotated[str, typer.Argument(help="segment key")],
    version: Annotated[str, typer.Argument(help="the stored version to make active")],
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Make a stored version the segment's active baseline (drift workers pick it up)."""
    store, _ = _store(clickhouse_url, database)
    before = next((i.version for i in store.list(segment) if i.active), None)
    info = store.activate(segment, version)
    was = f" (was {before})" if before and before != info.version else ""
    console.print(f"{info.segment}: {info.version} active{was}", highlight=False)


@baseline_app.command("export")
def export(
    segment: Annotated[str, typer.Argument(help="segment key")],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="JSON file")],
    version: VersionOption = None,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Write a stored baseline (the active one by default) to a JSON file."""
    store, _ = _store(clickhouse_url, database)
    baseline = store.get(segment, version)
    baseline.save(output)
    console.print(f"{baseline.segment_key} {baseline.version} -> {output}", highlight=False)


@baseline_app.command("import")
def import_baseline(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a baseline JSON")],
    activate: Annotated[
        bool, typer.Option("--activate/--no-activate", help="make it the active one")
    ] = False,
    clickhouse_url: ClickHouseUrl = None,
    database: Database = None,
) -> None:
    """Store a baseline from a JSON file (as written by export or build --output)."""
    from undertow.streams.drift.baseline import Baseline

    baseline = Baseline.load(file)
    store, _ = _store(clickhouse_url, database)
    info = store.save(baseline, activate=activate)
    state = "active" if info.active else "stored, not active"
    console.print(f"{info.segment}: {info.version} {state}", highlight=False)


__all__ = ["baseline_app"]
