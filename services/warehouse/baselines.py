"""Baselines in ClickHouse: saved once, seen by every drift worker, versioned and activated.

A baseline is about 1 MB of JSON (mostly reference embeddings). Drift workers on several
machines must judge a segment against the same one, so baselines live in the warehouse, in
the ``baselines`` table (``schemas/clickhouse/011_baselines.sql``): one row per (segment,
version) with the whole :meth:`Baseline.dumps` in ``body``. The *active* baseline of a
segment is its version with the greatest ``activated_at``; activating an older version
inserts its row again with a newer ``activated_at`` (the server's clock, and never earlier
than the segment's last activation, so the newest activation wins whoever made it). A
version saved without activating carries ``activated_at`` 1970-01-01: never active.

A worker polls :meth:`BaselineStore.revision` (one small query that reads no bodies) and
reloads only when the token changed; :meth:`BaselineStore.snapshot` gives the baselines and
the token of exactly that set, and a reload fetches only the bodies it has not parsed yet::

    store = BaselineStore(connect(url, database="undertow"))
    seen, baselines = store.snapshot()
    monitor = DriftMonitor(baselines)
    ...  # every few seconds:
    if store.revision() != seen:
        seen, baselines = store.snapshot()

A store keeps a cache and is not safe to share between threads; open one per thread.

>>> store = BaselineStore(client)  # doctest: +SKIP
>>> store.save(baseline).active  # doctest: +SKIP
True
>>> store.current()[baseline.segment_key].version == baseline.version  # doctest: +SKIP
True
"""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.services.warehouse import WarehouseError
from undertow.streams.drift.base import DriftError
from undertow.streams.drift.baseline import Baseline

TABLE = "baselines"
# activated_at of a version saved without activating; active versions are later than this.
NEVER = datetime(1970, 1, 1, tzinfo=UTC)
_INFO_COLUMNS = (
    "segment, segment_fields, version, created_at, activated_at, embedding_model, rows, "
    "events, source"
)
_COLUMNS: tuple[str, ...] = (
    "segment",
    "segment_fields",
    "version",
    "created_at",
    "activated_at",
    "embedding_model",
    "rows",
    "events",
    "source",
    "body",
)
_ACTIVE = (
    f"SELECT segment, argMax(version, (activated_at, version)) FROM {TABLE} FINAL "
    "WHERE activated_at > toDateTime64(0, 6, 'UTC') GROUP BY segment ORDER BY segment"
)
_UNKNOWN_TABLE = re.compile(r"\bCode:?\s*60\b|UNKNOWN_TABLE")
T = TypeVar("T")


class BaselineNotFoundError(DriftError):
    """No baseline of the segment asked for, no such version of it, or none active."""


@dataclass(frozen=True)
class BaselineInfo:
    """One stored version of a segment's baseline, without its body.

    ``activated_at``: when it last became active (None: never); ``active``: whether it is the
    segment's active version now. ``rows``: scored events it was built from; ``events``: the
    values it summarises, by embedded event type (``prompt``) and scalar quantity
    (``latency_ms``). ``source``: where the rows came from (a table and time range, a file).
    """

    segment: str
    version: str
    created_at: datetime
    activated_at: datetime | None
    active: bool
    rows: int
    events: Mapping[str, int]
    embedding_model: str | None
    source: Mapping[str, str]
    segment_fields: Mapping[str, str] = field(default_factory=dict)


def baseline_counts(baseline: Baseline) -> dict[str, int]:
    """Values the baseline summarises, by embedded event type and by scalar quantity."""
    counts = {name: profile.count for name, profile in baseline.embeddings.items()}
    counts.update({name: sp.summary.count for name, sp in baseline.scalars.items()})
    return dict(sorted(counts.items()))


def _default_rows(baseline: Baseline) -> int:
    """Rows of a baseline whose builder did not say: its embedded events, else the largest
    scalar count (a lower bound: rows without an embedding or a quantity do not show)."""
    embedded = sum(p.count for p in baseline.embeddings.values())
    return embedded or max((sp.summary.count for sp in baseline.scalars.values()), default=0)


def _utc(value: datetime) -> datetime:
    """ClickHouse hands back naive UTC datetimes; make them aware."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _revision(active: Mapping[str, str]) -> str:
    text = "\n".join(f"{segment}\t{version}" for segment, version in sorted(active.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class BaselineStore:
    """Saves, lists, loads and activates baselines in the ``baselines`` table of ``client``'s
    database (see the module doc). ``client``: from
    :func:`undertow.services.warehouse.client.connect`."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._parsed: dict[tuple[str, str], Baseline] = {}

    # -- writing -------------------------------------------------------------------------

    def save(
        self,
        baseline: Baseline,
        *,
        source: Mapping[str, str] | None = None,
        activate: bool = True,
        rows: int | None = None,
    ) -> BaselineInfo:
        """Store ``baseline`` (and make it its segment's active one, unless ``activate`` is
        False); returns the stored version's info.

        Idempotent: a version already stored is not written again (its first ``source`` and
        ``rows`` stay), and one already active is left as it is. ``source`` defaults to the
        baseline's own; ``rows`` (the scored events it was built from) to its embedded
        events.
        """
        if not baseline.version:
            raise DriftError(f"baseline {baseline.segment_key!r} has no version; build it first")
        segment, version = baseline.segment_key, baseline.version
        stored = self._info(segment, version)
        if stored is None:
            row = [
                segment,
                dict(baseline.segment),
                version,
                _utc(datetime.fromisoformat(baseline.created_at)),
                NEVER,
                baseline.embedding_model or "",
                _default_rows(baseline) if rows is None else rows,
                baseline_counts(baseline),
                dict(baseline.source if source is None else source),
                baseline.dumps(),
            ]
            self._call(
                f"storing baseline {segment!r} version {version}",
                lambda: self.client.insert(TABLE, [row], column_names=list(_COLUMNS)),
            )
            self._parsed[(segment, version)] = baseline
        elif not activate or stored.active:
            return stored
        return self.activate(segment, version) if activate else self._require(segment, version)

    def activate(self, segment: str, version: str) -> BaselineInfo:
        """Make ``version`` the active baseline of ``segment`` (a no-op when it already is)."""
        stored = self._require(segment, version)
        if stored.active:
            return stored
        # now, by the server's clock, but always after the segment's last activation
        now = (
            f"greatest(now64(6, 'UTC'), (SELECT max(activated_at) FROM {TABLE} "
            "WHERE segment = {segment:String}) + toIntervalMicrosecond(1))"
        )
        columns = ", ".join(_COLUMNS)
        copied = ", ".join(now if c == "activated_at" else c for c in _COLUMNS)
        self._call(
            f"activating baseline {segment!r} version {version}",
            lambda: self.client.command(
                f"INSERT INTO {TABLE} ({columns}) SELECT {copied} FROM {TABLE} FINAL "
                "WHERE segment = {segment:String} AND version = {version:String}",
                parameters={"segment": segment, "version": version},
            ),
        )
        return self._require(segment, version)

    # -- reading -------------------------------------------------------------------------

    def revision(self) -> str:
        """A token that changes whenever :meth:`current` would return other baselines: a hash
        of every segment's active version. Reads no bodies."""
        return _revision(self._active())

    def snapshot(self) -> tuple[str, dict[str, Baseline]]:
        """:meth:`revision` and :meth:`current` of one moment: the token names exactly the
        baselines returned. Bodies already parsed by this store are not fetched again."""
        active = self._active()
        wanted = [(segment, version) for segment, version in active.items()]
        missing = [pair for pair in wanted if pair not in self._parsed]
        if missing:
            loaded = self._bodies(missing)
            for pair in missing:
                if pair not in loaded:
                    raise BaselineNotFoundError(
                        f"baseline {pair[0]!r} version {pair[1]} was active but is gone"
                    )
            self._parsed.update(loaded)
        self._parsed = {pair: self._parsed[pair] for pair in wanted}
        return _revision(active), {segment: self._parsed[(segment, v)] for segment, v in wanted}

    def current(self) -> dict[str, Baseline]:
        """The active baseline of every segment that has one, by segment key (what a drift
        worker loads into :class:`~undertow.streams.drift.monitor.DriftMonitor`)."""
        return self.snapshot()[1]

    def list(self, segment: str | None = None) -> builtins.list[BaselineInfo]:
        """Every stored version (of ``segment``, or of all segments), by segment and age."""
        where = "WHERE segment = {segment:String} " if segment is not None else ""
        result = self._call(
            "listing baselines",
            lambda: self.client.query(
                f"SELECT {_INFO_COLUMNS} FROM {TABLE} FINAL {where}"
                "ORDER BY segment, created_at, version",
                parameters={"segment": segment} if segment is not None else None,
            ),
        )
        active = self._active()
        return [self._to_info(row, active) for row in result.result_rows]

    def info(self, segment: str, version: str | None = None) -> BaselineInfo:
        """The stored version's info (None: the active one); raises
        :class:`BaselineNotFoundError` when there is no such baseline."""
        if version is None:
            version = self._active_version(segment)
        return self._require(segment, version)

    def get(self, segment: str, version: str | None = None) -> Baseline:
        """The baseline of ``segment`` at ``version`` (None: the active one); raises
        :class:`BaselineNotFoundError` when there is no such baseline."""
        if version is None:
            version = self._active_version(segment)
        pair = (segment, version)
        if pair in self._parsed:
            return self._parsed[pair]
        loaded = self._bodies([pair])
        if pair not in loaded:
            self._require(segment, version)  # raises, naming what is stored
        return loaded[pair]

    # -- internals -----------------------------------------------------------------------

    def _active(self) -> dict[str, str]:
        result = self._call("reading the active baselines", lambda: self.client.query(_ACTIVE))
        return {str(segment): str(version) for segment, version in result.result_rows}

    def _active_version(self, segment: str) -> str:
        active = self._active()
        if segment in active:
            return active[segment]
        stored = self.list(segment)
        if stored:
            raise BaselineNotFoundError(
                f"segment {segment!r} has no active baseline; stored versions: "
                + ", ".join(i.version for i in stored)
                + " (activate one)"
            )
        raise self._unknown_segment(segment)

    def _unknown_segment(self, segment: str) -> BaselineNotFoundError:
        known = sorted({i.segment for i in self.list()})
        shown = ", ".join(repr(s) for s in known[:10]) + (" ..." if len(known) > 10 else "")
        return BaselineNotFoundError(
            f"no baseline for segment {segment!r}; stored segments: {shown or 'none'}"
        )

    def _info(self, segment: str, version: str) -> BaselineInfo | None:
        result = self._call(
            f"reading baseline {segment!r} version {version}",
            lambda: self.client.query(
                f"SELECT {_INFO_COLUMNS} FROM {TABLE} FINAL "
                "WHERE segment = {segment:String} AND version = {version:String}",
                parameters={"segment": segment, "version": version},
            ),
        )
        if not result.result_rows:
            return None
        return self._to_info(result.result_rows[0], self._active())

    def _require(self, segment: str, version: str) -> BaselineInfo:
        stored = self._info(segment, version)
        if stored is not None:
            return stored
        versions = [i.version for i in self.list(segment)]
        if not versions:
            raise self._unknown_segment(segment)
        raise BaselineNotFoundError(
            f"segment {segment!r} has no baseline version {version!r}; stored: "
            + ", ".join(versions)
        )

    def _bodies(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Baseline]:
        result = self._call(
            f"loading {len(pairs)} baselines",
            lambda: self.client.query(
                f"SELECT segment, version, body FROM {TABLE} FINAL "
                "WHERE (segment, version) IN {pairs:Array(Tuple(String, String))}",
                parameters={"pairs": [tuple(p) for p in pairs]},
            ),
        )
        out: dict[tuple[str, str], Baseline] = {}
        for segment, version, body in result.result_rows:
            try:
                baseline = Baseline.loads(body)
            except DriftError as exc:
                raise DriftError(f"stored baseline {segment!r} version {version}: {exc}") from exc
            if (baseline.segment_key, baseline.version) != (segment, version):
                raise DriftError(
                    f"the row of baseline {segment!r} version {version} holds baseline "
                    f"{baseline.segment_key!r} version {baseline.version}"
                )
            out[(segment, version)] = baseline
        return out

    @staticmethod
    def _to_info(row: Sequence[Any], active: Mapping[str, str]) -> BaselineInfo:
        segment, fields, version, created, activated, model, rows, events, source = row
        activated_at = _utc(activated)
        return BaselineInfo(
            segment=str(segment),
            version=str(version),
            created_at=_utc(created),
            activated_at=None if activated_at <= NEVER else activated_at,
            active=active.get(str(segment)) == str(version),
            rows=int(rows),
            events={str(k): int(v) for k, v in dict(events).items()},
            embedding_model=str(model) or None,
            source={str(k): str(v) for k, v in dict(source).items()},
            segment_fields={str(k): str(v) for k, v in dict(fields).items()},
        )

    @staticmethod
    def _call(what: str, run: Callable[[], T]) -> T:
        """``run()``, with ClickHouse's errors wrapped (a missing table says how to fix it)."""
        try:
            return run()
        except ClickHouseError as exc:
            hint = ""
            if _UNKNOWN_TABLE.search(str(exc)):
                hint = f" (no {TABLE} table: apply the migrations with `undertow migrate`)"
            raise WarehouseError(f"{what} failed{hint}: {exc}") from exc


__all__ = ["NEVER", "BaselineInfo", "BaselineNotFoundError", "BaselineStore", "baseline_counts"]
