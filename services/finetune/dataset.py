"""The fine-tune data set: examples read from ClickHouse with explicit SQL, cleaned and split.

The default query (:func:`build_query`) pairs each completion of one app with the prompt it
answered and keeps it when the trace's latest feedback score is at least ``min_feedback``;
with ``include_corrections`` it also takes corrected answers: feedback events whose label is
one of ``correction_labels`` (``correction`` by default) carry the right answer in their
comment, and that answer replaces the completion of the trace. A completion whose trace got
a correction is never taken as it is. Every value reaches ClickHouse as a bound parameter
(``{name:Type}``); ``sql`` replaces the whole query (it may use the same parameters).

:func:`clean` is pure: it takes the examples, their scores and a function that embeds them,
and drops, counting each reason, empty examples, toxic or injected ones, exact duplicates
(normalised text) and near duplicates (cosine similarity above a threshold, earlier kept).

>>> query = FineTuneQuery(app="support-bot")
>>> sql, parameters = build_query(query)
>>> parameters["app"], parameters["min_feedback"]
('support-bot', 0.5)
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from undertow.errors import UndertowError
from undertow.streams.scoring.enrich import MAX_TEXT_CHARS, turn_text


class FineTuneError(UndertowError):
    """A fine-tune job could not run as asked."""


class InvalidParameter(FineTuneError):
    """An action parameter is missing, unknown or has a value the job cannot use."""


class DatasetError(FineTuneError):
    """The training set could not be read from the warehouse."""


class NotEnoughExamples(FineTuneError):
    """Too few examples are left to train and evaluate on."""


# --- reading action parameters --------------------------------------------------------------


class ActionParameters:
    """Typed reads of an action's string parameters, remembering which names were read.

    >>> p = ActionParameters({"rank": "8"})
    >>> p.integer("rank", 4, low=1), p.unread()
    (8, [])
    """

    def __init__(self, parameters: Mapping[str, str]) -> None:
        self._values = {str(k): str(v) for k, v in parameters.items()}
        self._read: set[str] = set()

    def _raw(self, name: str) -> str | None:
        self._read.add(name)
        value = self._values.get(name)
        return None if value is None or not value.strip() else value.strip()

    def text(self, name: str, default: str | None = None) -> str | None:
        """The value as given (stripped), or ``default`` when absent or blank."""
        value = self._raw(name)
        return default if value is None else value

    def number(
        self, name: str, default: float, *, low: float | None = None, high: float | None = None
    ) -> float:
        """A finite float within ``[low, high]``."""
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if (
            not math.isfinite(number)
            or (low is not None and number < low)
            or (high is not None and number > high)
        ):
            raise InvalidParameter(
                f"parameter {name!r}: expected {_range(low, high)}, got {value!r}"
            )
        return number

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        """An integer within ``[low, high]``."""
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise InvalidParameter(
                f"parameter {name!r}: expected {_range(low, high, 'an integer')}, got {value!r}"
            ) from None
        if (low is not None and number < low) or (high is not None and number > high):
            raise InvalidParameter(
                f"parameter {name!r}: expected {_range(low, high, 'an integer')}, got {value!r}"
            )
        return number

    def flag(self, name: str, default: bool) -> bool:
        """``true``/``false`` (also ``1``/``0``, ``yes``/``no``)."""
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise InvalidParameter(f"parameter {name!r}: expected true or false, got {value!r}")

    def names(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A comma-separated list of non-empty names."""
        value = self._raw(name)
        if value is None:
            return default
        items = tuple(part.strip() for part in value.split(","))
        if not all(items):
            raise InvalidParameter(
                f"parameter {name!r}: expected comma-separated names, got {value!r}"
            )
        return items

    def time(self, name: str) -> datetime | None:
        """An ISO 8601 time; one without a zone is UTC."""
        value = self._raw(name)
        if value is None:
            return None
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameter(
                f"parameter {name!r}: expected an ISO 8601 time such as "
                f"2025-03-01T00:00:00Z, got {value!r}"
            ) from None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    def known(self) -> list[str]:
        """The names read so far: the parameters this job understands."""
        return sorted(self._read)

    def unread(self) -> list[str]:
        """The names given that no read asked for (typos, unsupported options)."""
        return sorted(set(self._values) - self._read)


def _range(low: float | None, high: float | None, noun: str = "a number") -> str:
    if low is not None and high is not None:
        return f"{noun} from {low:g} to {high:g}"
    if low is not None:
        return f"{noun} >= {low:g}"
    if high is not None:
        return f"{noun} <= {high:g}"
    return f"a finite {noun.split()[-1]}"


# --- the query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FineTuneQuery:
    """Which traffic becomes training data.

    ``app`` is required; ``model`` and ``prompt_name`` filter the completions; ``since``
    (inclusive) and ``until`` (exclusive) bound the completions' event time. ``sql``, when
    set, is run instead of the default query with the same parameters available.
    """

    app: str
    model: str | None = None
    prompt_name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_feedback: float = 0.5
    feedback_sources: tuple[str, ...] = ()
    include_corrections: bool = False
    correction_labels: tuple[str, ...] = ("correction",)
    limit: int = 5_000
    sql: str | None = None

    def __post_init__(self) -> None:
        if not self.app.strip():
            raise InvalidParameter("parameter 'app': expected an app name, got an empty one")
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                raise InvalidParameter(
                    f"parameter {name!r}: expected a time with a zone, got {when}"
                )
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidParameter(
                f"expected since < until, got since={self.since.isoformat()} "
                f"until={self.until.isoformat()}"
            )
        if self.limit < 1:
            raise InvalidParameter(f"parameter 'limit': expected at least 1, got {self.limit}")
        if not self.correction_labels:
            raise InvalidParameter("parameter 'correction_labels': expected at least one label")
        if self.sql is not None and not self.sql.strip():
            raise InvalidParameter("parameter 'sql': expected a query, got an empty one")

    @classmethod
    def from_parameters(cls, params: ActionParameters, *, app: str | None = None) -> FineTuneQuery:
        """Read ``app``, ``model``, ``prompt_name``, ``since``, ``until``, ``min_feedback``,
        ``feedback_sources``, ``include_corrections``, ``correction_labels``, ``limit``, ``sql``;
        ``app`` (e.g. the action's own app) is used when the parameters name none."""
        name = params.text("app", app)
        if name is None:
            raise InvalidParameter("parameter 'app': expected the app to train for, got none")
        return cls(
            app=name,
            model=params.text("model"),
            prompt_name=params.text("prompt_name"),
            since=params.time("since"),
            until=params.time("until"),
            min_feedback=params.number("min_feedback", 0.5),
            feedback_sources=params.names("feedback_sources"),
            include_corrections=params.flag("include_corrections", False),
            correction_labels=params.names("correction_labels", ("correction",)),
            limit=params.integer("limit", 5_000, low=1, high=1_000_000),
            sql=params.text("sql"),
        )


_PLACEHOLDER: Final = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:[^{}]+\}")
# Completions that did not end normally are not answers worth imitating.
_BAD_FINISH: Final = ("error", "content_filter", "length")


def build_query(query: FineTuneQuery) -> tuple[str, dict[str, Any]]:
    """The SQL and its bound parameters; columns: ``event_id``, ``prompt_event_id``,
    ``trace_id``, ``event_time``, ``prompt``, ``prompt_messages``, ``completion``, ``source``.

    A completion pairs with the prompt whose span is its parent, else with the latest prompt
    of its trace before it. A custom ``sql`` gets only the parameters it names.
    """
    parameters: dict[str, Any] = {
        "app": query.app,
        "min_feedback": query.min_feedback,
        "correction_labels": list(query.correction_labels),
        "limit": query.limit,
    }
    completion_filters = [
        "app = {app:String}",
        "event_type = 'completion'",
        "NOT truncated",
        "trimBoth(ifNull(completion_text, '')) != ''",
        "ifNull(finish_reason, '') NOT IN (" + ", ".join(f"'{f}'" for f in _BAD_FINISH) + ")",
    ]
    for name in ("model", "prompt_name"):
        value = getattr(query, name)
        if value is not None:
            parameters[name] = value
            completion_filters.append(f"{name} = {{{name}:String}}")
    if query.since is not None:
        parameters["since"] = query.since
        completion_filters.append("event_time >= {since:DateTime64(6, 'UTC')}")
    if query.until is not None:
        parameters["until"] = query.until
        completion_filters.append("event_time < {until:DateTime64(6, 'UTC')}")
    source_filter = ""
    if query.feedback_sources:
        parameters["feedback_sources"] = list(query.feedback_sources)
        source_filter = "\n          AND feedback_source IN {feedback_sources:Array(String)}"

    if query.sql is not None:
        named = {m.group(1) for m in _PLACEHOLDER.finditer(query.sql)}
        return query.sql, {k: v for k, v in parameters.items() if k in named}

    corrected = ""
    if query.include_corrections:
        corrected = _CORRECTED
    sql = _QUERY.format(
        completion_filters="\n          AND ".join(completion_filters),
        source_filter=source_filter,
        corrected=corrected,
    )
    return sql, parameters


_QUERY: Final = """\
WITH
    completions AS
    (
        SELECT event_id, trace_id, span_id, ifNull(parent_span_id, '') AS parent_span_id,
               event_time, assumeNotNull(completion_text) AS completion_text
        FROM events FINAL
        WHERE {completion_filters}
    ),
    prompts AS
    (
        SELECT event_id, trace_id, span_id, event_time, prompt_messages
        FROM events FINAL
        WHERE app = {{app:String}} AND event_type = 'prompt' AND NOT truncated
          AND trace_id IN (SELECT trace_id FROM completions)
    ),
    pairs AS
    (
        SELECT c.event_id AS event_id,
               any(c.trace_id) AS trace_id,
               any(c.span_id) AS span_id,
               any(c.event_time) AS event_time,
               any(c.completion_text) AS completion,
               argMax(p.event_id, (p.span_id = c.parent_span_id, p.event_time)) AS prompt_event_id,
               argMax(p.span_id, (p.span_id = c.parent_span_id, p.event_time)) AS prompt_span_id,
               argMax(p.prompt_messages, (p.span_id = c.parent_span_id, p.event_time))
                   AS prompt_messages
        FROM completions AS c
        INNER JOIN prompts AS p ON p.trace_id = c.trace_id
        WHERE p.span_id = c.parent_span_id OR p.event_time <= c.event_time
        GROUP BY c.event_id
    ),
    feedback AS
    (
        SELECT trace_id, argMax(feedback_score, event_time) AS score
        FROM events FINAL
        WHERE app = {{app:String}} AND event_type = 'feedback' AND feedback_score IS NOT NULL
          AND trace_id IN (SELECT trace_id FROM completions){source_filter}
        GROUP BY trace_id
    ),
    corrections AS
    (
        SELECT trace_id,
               argMax(event_id, event_time) AS correction_id,
               argMax(assumeNotNull(feedback_comment), event_time) AS corrected,
               argMax(ifNull(parent_span_id, ''), event_time) AS target_span
        FROM events FINAL
        WHERE app = {{app:String}} AND event_type = 'feedback'
          AND feedback_label IN {{correction_labels:Array(String)}}
          AND trimBoth(ifNull(feedback_comment, '')) != ''
          AND trace_id IN (SELECT trace_id FROM completions)
        GROUP BY trace_id
    )
SELECT event_id, prompt_event_id, trace_id, event_time,
       arrayStringConcat(arrayMap(m -> tupleElement(m, 'content'), prompt_messages), '\\n')
           AS prompt,
       prompt_messages, completion, source
FROM
(
    SELECT toString(p.event_id) AS event_id, toString(p.prompt_event_id) AS prompt_event_id,
           p.trace_id AS trace_id, p.event_time AS event_time,
           p.prompt_messages AS prompt_messages, p.completion AS completion,
           'completion' AS source
    FROM pairs AS p
    INNER JOIN feedback AS f ON f.trace_id = p.trace_id
    WHERE f.score >= {{min_feedback:Float64}}
      AND p.trace_id NOT IN (SELECT trace_id FROM corrections){corrected}
)
ORDER BY event_time, event_id
LIMIT {{limit:UInt32}}"""

# The latest correction of a trace replaces the completion it points at (its parent span is
# the completion or the prompt), else the trace's latest completion.
_CORRECTED: Final = """
    UNION ALL
    SELECT toString(any(correction_id)) AS event_id,
           toString(argMax(pair_prompt_id, pair_rank)) AS prompt_event_id,
           correction_trace AS trace_id,
           argMax(pair_time, pair_rank) AS event_time,
           argMax(pair_messages, pair_rank) AS prompt_messages,
           any(corrected) AS completion,
           'correction' AS source
    FROM
    (
        SELECT x.trace_id AS correction_trace, x.correction_id AS correction_id,
               x.corrected AS corrected, p.prompt_event_id AS pair_prompt_id,
               p.event_time AS pair_time, p.prompt_messages AS pair_messages,
               (x.target_span = p.span_id OR x.target_span = p.prompt_span_id, p.event_time)
                   AS pair_rank
        FROM corrections AS x
        INNER JOIN pairs AS p ON p.trace_id = x.trace_id
    )
    GROUP BY correction_trace"""


# --- examples --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One prompt and the answer to train on.

    ``event_id`` is the completion's (or the correction's) event id, ``prompt_event_id`` the
    prompt's; both are '' when the query did not say. ``messages`` is the prompt as chat
    messages (role, content); empty means one user message holding ``prompt``.
    """

    prompt: str
    completion: str
    event_id: str = ""
    prompt_event_id: str = ""
    trace_id: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    source: str = "completion"

    def prompt_messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages for a chat template."""
        if self.messages:
            return [{"role": role, "content": content} for role, content in self.messages]
        return [{"role": "user", "content": self.prompt}]

    def turn_input(self) -> str:
        """What the enricher embeds as the prompt: the turn's new input, clipped alike."""
        return turn_text(self.prompt_messages())[:MAX_TEXT_CHARS]

    def event_ids(self) -> tuple[str, ...]:
        """The known event ids of the prompt and the answer."""
        return tuple(i for i in (self.prompt_event_id, self.event_id) if i)


_REQUIRED_COLUMNS: Final = ("prompt", "completion")


def fetch_examples(client: Client, query: FineTuneQuery) -> list[Example]:
    """Run the query (:func:`build_query`) and read its rows as examples, in row order."""
    sql, parameters = build_query(query)
    try:
        result = client.query(sql, parameters=parameters)
    except ClickHouseError as exc:
        what = "the custom sql" if query.sql is not None else "the training-set query"
        raise DatasetError(f"{what} failed for app {query.app!r}: {exc}") from exc
    columns = list(result.column_names)
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"expected the query to return columns {list(_REQUIRED_COLUMNS)} (and optionally "
            f"event_id, prompt_event_id, trace_id, prompt_messages, source), got {columns}"
        )
    return [_example(dict(zip(columns, row, strict=True))) for row in result.result_rows]


def _example(row: Mapping[str, Any]) -> Example:
    messages = tuple(_message(m) for m in row.get("prompt_messages") or ())
    prompt = row.get("prompt")
    return Example(
        prompt=str(prompt) if prompt is not None else "\n".join(c for _, c in messages),
        completion=str(row.get("completion") or ""),
        event_id=_text(row.get("event_id")),
        prompt_event_id=_text(row.get("prompt_event_id")),
        trace_id=_text(row.get("trace_id")),
        messages=messages,
        source=_text(row.get("source")) or "query",
    )


def _message(value: Any) -> tuple[str, str]:
    if isinstance(value, Mapping):
        return str(value["role"]), str(value["content"])
    role, content = value
    return str(role), str(content)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --- scores and stored embeddings ------------------------------------------------------------


@dataclass(frozen=True)
class ScoreFlags:
    """An event's toxicity and injection scores (None where it was not scored)."""

    toxicity: float | None = None
    injection: float | None = None


_ID_CHUNK: Final = 1_000  # event ids per lookup query, to keep the bound parameter small


def _uuids(event_ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for event_id in dict.fromkeys(event_ids):
        try:
            out.append(str(uuid.UUID(event_id)))
        except ValueError:
            continue  # a custom query's own ids are not events: nothing stored for them
    return out


def fetch_flags(client: Client, app: str, event_ids: Iterable[str]) -> dict[str, ScoreFlags]:
    """Toxicity and injection of the given events from ``scores`` (the newest scoring)."""
    sql = """\
SELECT toString(event_id) AS id,
       ifNull(toxicity, if(mapContains(scores, 'toxicity'), scores['toxicity'], NULL)) AS tox,
       ifNull(injection, if(mapContains(scores, 'injection'), scores['injection'], NULL)) AS inj
FROM scores FINAL
WHERE app = {app:String} AND event_id IN {ids:Array(UUID)}"""
    flags: dict[str, ScoreFlags] = {}
    ids = _uuids(event_ids)
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        try:
            rows = client.query(sql, parameters={"app": app, "ids": chunk}).result_rows
        except ClickHouseError as exc:
            raise DatasetError(f"reading scores of {len(chunk)} events failed: {exc}") from exc
        for event_id, toxicity, injection in rows:
            flags[str(event_id)] = ScoreFlags(toxicity, injection)
    return flags


@dataclass(frozen=True)
class StoredVectors:
    """Vectors of one field (``prompt`` or ``completion``) from the ``embeddings`` table, of
    the embedding model that covers most of the events asked for."""

    field: str
    model: str
    vectors: Mapping[str, npt.NDArray[np.float32]]


def fetch_embeddings(
    client: Client, app: str, event_ids: Iterable[str], field: str
) -> StoredVectors:
    """The stored vectors of ``field`` for the given events; where several embedding models
    wrote vectors, the one with the most of these events (then by name) is used."""
    sql = """\
SELECT toString(event_id) AS id, model, vector
FROM embeddings FINAL
WHERE app = {app:String} AND field = {field:String} AND event_id IN {ids:Array(UUID)}"""
    by_model: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    ids = _uuids(event_ids)
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        parameters = {"app": app, "field": field, "ids": chunk}
        try:
            rows = client.query(sql, parameters=parameters).result_rows
        except ClickHouseError as exc:
            raise DatasetError(f"reading {field} embeddings failed: {exc}") from exc
        for event_id, model, vector in rows:
            by_model.setdefault(str(model), {})[str(event_id)] = np.asarray(vector, np.float32)
    if not by_model:
        return StoredVectors(field, "", {})
    model = min(by_model, key=lambda m: (-len(by_model[m]), m))
    return StoredVectors(field, model, by_model[model])


TextEmbedder = Callable[[Sequence[str]], npt.NDArray[Any]]
"""Texts to vectors, one row per text (e.g. ``Embedder.embed`` of the scoring package)."""


@dataclass
class ExampleVectors:
    """Embeds examples for near-duplicate detection: the prompt's and the answer's unit
    vectors side by side, scaled so two examples' cosine is the mean of the prompt cosine and
    the answer cosine.

    A field's stored vectors are used when they cover every example asked for (one model,
    one space); otherwise that field is computed for all of them with ``embed``, so vectors
    of two models never meet. ``sources`` records which happened per field.
    """

    prompts: StoredVectors
    completions: StoredVectors
    embed: TextEmbedder | None
    sources: dict[str, str] = field(default_factory=dict)

    def __call__(self, examples: Sequence[Example]) -> npt.NDArray[np.float32]:
        if not examples:
            return np.zeros((0, 0), np.float32)
        prompt = self._field(
            self.prompts, [e.prompt_event_id for e in examples], [e.turn_input() for e in examples]
        )
        answer = self._field(
            self.completions,
            [e.event_id for e in examples],
            [e.completion[:MAX_TEXT_CHARS] for e in examples],
        )
        return np.hstack([prompt, answer]).astype(np.float32) / np.float32(math.sqrt(2.0))

    def _field(
        self, stored: StoredVectors, ids: Sequence[str], texts: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        if all(i and i in stored.vectors for i in ids):
            self.sources[stored.field] = f"table:{stored.model}"
            matrix = np.stack([stored.vectors[i] for i in ids])
        else:
            if self.embed is None:
                covered = sum(1 for i in ids if i and i in stored.vectors)
                raise DatasetError(
                    f"expected stored {stored.field} embeddings for all {len(ids)} examples or an "
                    f"embedding model to compute them, got {covered} stored and no model"
                )
            self.sources[stored.field] = "computed"
            matrix = np.asarray(self.embed(list(texts)), np.float32)
        if matrix.shape[0] != len(ids):
            raise DatasetError(f"expected {len(ids)} {stored.field} vectors, got {matrix.shape[0]}")
        return unit_rows(matrix)


def unit_rows(matrix: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length (zero rows stay zero: similar to nothing)."""
    m = np.asarray(matrix, np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
    return out


# --- cleaning --------------------------------------------------------------------------------

REASONS: Final = ("empty", "toxic", "injection", "exact_duplicate", "near_duplicate")
"""Why an example is dropped, in the order the checks run (each example counts once)."""


@dataclass(frozen=True)
class CleanSpec:
    """Thresholds: drop when toxicity or injection is strictly above its maximum (on the
    prompt or the answer), and when the cosine similarity to a kept example is strictly
    above ``near_duplicate``."""

    near_duplicate: float = 0.95
    max_toxicity: float = 0.5
    max_injection: float = 0.8

    def __post_init__(self) -> None:
        for name in ("near_duplicate", "max_toxicity", "max_injection"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidParameter(f"parameter {name!r}: expected 0 to 1, got {value}")

    @classmethod
    def from_parameters(cls, params: ActionParameters) -> CleanSpec:
        """Read ``near_duplicate``, ``max_toxicity``, ``max_injection``."""
        return cls(
            near_duplicate=params.number("near_duplicate", 0.95, low=0.0, high=1.0),
            max_toxicity=params.number("max_toxicity", 0.5, low=0.0, high=1.0),
            max_injection=params.number("max_injection", 0.8, low=0.0, high=1.0),
        )


@dataclass(frozen=True)
class Dropped:
    """An example left out, why, and (for duplicates) the kept example it repeats."""

    example: Example
    reason: str
    kept: Example | None = None
    value: float | None = None


@dataclass(frozen=True)
class Cleaned:
    """The examples kept, in input order, and those dropped."""

    examples: tuple[Example, ...]
    dropped: tuple[Dropped, ...]

    def counts(self) -> dict[str, int]:
        """Dropped examples per reason, every reason present."""
        counted = Counter(d.reason for d in self.dropped)
        return {reason: counted.get(reason, 0) for reason in REASONS}


def normalise(text: str) -> str:
    """Text compared for exact duplicates: NFKC, case-folded, whitespace collapsed.

    >>> normalise("  Hello,\\n  WORLD ")
    'hello, world'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def clean(
    examples: Sequence[Example],
    *,
    embed: Callable[[Sequence[Example]], npt.NDArray[Any]],
    flags: Mapping[str, ScoreFlags],
    spec: CleanSpec | None = None,
) -> Cleaned:
    """Drop empty, toxic, injected, exactly and nearly duplicated examples; keep the first of
    duplicates. ``flags`` maps event ids to scores; ``embed`` gets the examples that survive
    the other checks, once, and returns one vector per example."""
    spec = spec or CleanSpec()
    dropped: list[tuple[int, Dropped]] = []
    survivors: list[tuple[int, Example]] = []
    seen: dict[tuple[str, str], Example] = {}
    for index, example in enumerate(examples):
        reason, value = _flagged(example, flags, spec)
        if reason is not None:
            dropped.append((index, Dropped(example, reason, value=value)))
            continue
        key = (
            "\x1f".join(normalise(f"{r}: {c}") for r, c in _message_pairs(example)),
            normalise(example.completion),
        )
        if key in seen:
            dropped.append((index, Dropped(example, "exact_duplicate", kept=seen[key])))
            continue
        seen[key] = example
        survivors.append((index, example))

    rest = [e for _, e in survivors]
    kept, near = near_duplicates(embed(rest) if rest else None, spec.near_duplicate)
    for i, (twin, similarity) in near.items():
        index, example = survivors[i]
        dropped.append((index, Dropped(example, "near_duplicate", rest[twin], similarity)))
    dropped.sort(key=lambda pair: pair[0])
    return Cleaned(tuple(rest[i] for i in kept), tuple(d for _, d in dropped))


def _message_pairs(example: Example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.prompt_messages()]


def _flagged(
    example: Example, flags: Mapping[str, ScoreFlags], spec: CleanSpec
) -> tuple[str | None, float | None]:
    if not example.completion.strip() or not any(c.strip() for _, c in _message_pairs(example)):
        return "empty", None
    scored = [flags[i] for i in example.event_ids() if i in flags]
    toxicity = max((f.toxicity for f in scored if f.toxicity is not None), default=None)
    if toxicity is not None and toxicity > spec.max_toxicity:
        return "toxic", toxicity
    injection = max((f.injection for f in scored if f.injection is not None), default=None)
    if injection is not None and injection > spec.max_injection:
        return "injection", injection
    return None, None


_BLOCK: Final = 256


def near_duplicates(
    vectors: npt.NDArray[Any] | None, threshold: float
) -> tuple[list[int], dict[int, tuple[int, float]]]:
    """Greedy, in row order: a row whose cosine similarity to a kept row is above
    ``threshold`` is dropped. Returns the kept row indices and, per dropped row, the kept row
    it is most similar to and that similarity.

    >>> kept, dropped = near_duplicates(np.array([[1.0, 0], [0.99, 0.1], [0, 1.0]]), 0.95)
    >>> kept, {i: (j, round(s, 3)) for i, (j, s) in dropped.items()}
    ([0, 2], {1: (0, 0.995)})
    """
    if vectors is None or len(vectors) == 0:
        return [], {}
    unit = unit_rows(vectors)
    kept: list[int] = []
    dropped: dict[int, tuple[int, float]] = {}
    kept_matrix = np.zeros((0, unit.shape[1]), np.float32)
    for start in range(0, len(unit), _BLOCK):
        block = unit[start : start + _BLOCK]
        to_kept = block @ kept_matrix.T  # similarities to rows kept in earlier blocks
        within = block @ block.T
        block_kept: list[int] = []
        for j in range(len(block)):
            best, best_sim = -1, -math.inf
            if to_kept.shape[1]:
                k = int(np.argmax(to_kept[j]))
                best, best_sim = kept[k], float(to_kept[j, k])
            for b in block_kept:
                if float(within[j, b]) > best_sim:
                    best, best_sim = start + b, float(within[j, b])
            if best >= 0 and best_sim > threshold:
                dropped[start + j] = (best, best_sim)
            else:
                block_kept.append(j)
        kept.extend(start + b for b in block_kept)
        kept_matrix = np.vstack([kept_matrix, block[block_kept]])
    return kept, dropped


# --- the held-out split ----------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    """Hold out ``fraction`` of the examples (rounded up), at least ``minimum``, chosen by a
    seeded shuffle so the same examples and seed give the same split."""

    fraction: float = 0.1
    minimum: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise InvalidParameter(
                f"parameter 'held_out_fraction': expected between 0 and 1, got {self.fraction}"
            )
        if self.minimum < 1:
            raise InvalidParameter(
                f"parameter 'min_held_out': expected at least 1, got {self.minimum}"
            )

    @classmethod
    def from_parameters(cls, params: ActionParameters) -> SplitSpec:
        """Read ``held_out_fraction``, ``min_held_out``, ``split_seed``."""
        return cls(
            fraction=params.number("held_out_fraction", 0.1, low=0.0, high=1.0),
            minimum=params.integer("min_held_out", 10, low=1),
            seed=params.integer("split_seed", 0),
        )


def split(
    examples: Sequence[Example], spec: SplitSpec | None = None
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """``(train, held_out)``, each in input order; at least one example is left to train."""
    spec = spec or SplitSpec()
    n = len(examples)
    held = max(spec.minimum, math.ceil(spec.fraction * n))
    if held >= n:
        raise NotEnoughExamples(
            f"expected more than {held} examples to hold out {held} and train on the rest, got {n}"
        )
    chosen = set(random.Random(spec.seed).sample(range(n), held))
    train = tuple(e for i, e in enumerate(examples) if i not in chosen)
    held_out = tuple(e for i, e in enumerate(examples) if i in chosen)
    return train, held_out


__all__ = [
    "REASONS",
    "ActionParameters",
    "CleanSpec",
    "Cleaned",
    "DatasetError",
    "Dropped",
    "Example",
    "ExampleVectors",
    "FineTuneError",
    "FineTuneQuery",
    "InvalidParameter",
    "NotEnoughExamples",
    "ScoreFlags",
    "SplitSpec",
    "StoredVectors",
    "TextEmbedder",
    "build_query",
    "clean",
    "fetch_embeddings",
    "fetch_examples",
    "fetch_flags",
    "near_duplicates",
    "normalise",
    "split",
]
