"""The model and prompt registry as state, and the records each change writes.

The registry lives in the compacted topic ``undertow.registry.v1``: one record per version,
keyed ``kind/name/version``, so compaction keeps the latest state of every version (see
:func:`record_key`). Readers fold the records into a :class:`RegistryState`; writers ask the
planning functions below for the records of a change and publish them. Everything here is pure:
no Kafka, no clock (callers pass ``now`` in microseconds).

Kinds:

* ``model``: a served model name with numbered versions, each a base model and an optional
  LoRA adapter. Status ``candidate`` (registered, not serving), ``active`` (serving; one per
  name), ``retired``. A version stops being active for a reason kept in its metadata:
  ``superseded`` (another was promoted: it was good, a rollback may return to it) or
  ``rolled_back`` (it was taken out for cause: never a rollback target again).
* ``prompt``: a template name with numbered versions and labels (``production``, ``canary``);
  a label sits on one version at a time, and each version remembers when it held which label,
  so a label can be rolled back to its previous holder.
* prompt A/B tests: kind ``prompt`` with version ``ab:<test>`` and status ``running`` or
  ``stopped``. The test's variants (name to prompt version), weights and the unit of sticky
  assignment (``user`` or ``session``) sit in its metadata. A running test on a prompt and label
  decides which version a request gets (:func:`assign_variant`).

>>> s = RegistryState()
>>> for r in push_model(s, "support", base_model="SmolLM2-135M-Instruct", now=1):
...     _ = s.apply(r)
>>> for r in promote_model(s, "support", "1", now=2):
...     _ = s.apply(r)
>>> s.active_model("support").version
'1'
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from undertow.errors import UndertowError
from undertow.schemas.events import envelope

Kind = Literal["model", "adapter", "prompt"]
KINDS: tuple[Kind, ...] = ("model", "adapter", "prompt")
MODEL_STATUSES = ("candidate", "active", "retired")
EXPERIMENT_PREFIX = "ab:"
SPLIT_UNITS = ("user", "session")
DEFAULT_LABEL = "production"
# Ids of registry records are uuid5 in this namespace, so the same change planned twice from
# the same state (a retried action) writes the same ids and sinks keep one row.
ID_NAMESPACE = uuid.UUID("6f0c3c41-5a57-4f0e-9b7a-2d7b6b1f4e21")
REGISTRY_APP = "undertow-registry"
# Metadata of a version's last deactivation, cleared when it serves again.
DEACTIVATION = ("deactivated_at", "deactivated_reason")


class RegistryError(UndertowError):
    """A registry change that cannot be made (unknown version, bad argument)."""


def record_key(kind: str, name: str, version: str) -> str:
    """The topic key of one version: compaction keeps its latest record."""
    return f"{kind}/{name}/{version}"


@dataclass(frozen=True)
class Version:
    """One model, adapter or prompt version as the registry holds it now."""

    kind: str
    name: str
    version: str
    status: str
    labels: tuple[str, ...] = ()
    base_model: str | None = None
    adapter_path: str | None = None
    template: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    updated_us: int = 0
    event_id: str = ""

    @property
    def key(self) -> str:
        return record_key(self.kind, self.name, self.version)

    @property
    def is_experiment(self) -> bool:
        return self.kind == "prompt" and self.version.startswith(EXPERIMENT_PREFIX)

    def micros(self, name: str) -> int | None:
        """A timestamp kept in the metadata (``activated_at``, ...) as microseconds."""
        raw = self.metadata.get(name)
        return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None

    def describe(self) -> str:
        """``name@version`` with the adapter, for logs and messages (never prompt text)."""
        adapter = f" adapter={self.adapter_path}" if self.adapter_path else ""
        return f"{self.name}@{self.version}{adapter}"


@dataclass(frozen=True)
class Experiment:
    """A prompt A/B test: which prompt versions compete, with what weights, split by what."""

    prompt: str
    test: str
    label: str
    variants: Mapping[str, str]
    weights: Mapping[str, float]
    split_by: str
    control: str
    status: str
    act: bool = False

    @classmethod
    def from_version(cls, v: Version) -> Experiment:
        meta = v.metadata
        variants = json.loads(meta.get("variants", "{}"))
        weights = {k: float(w) for k, w in json.loads(meta.get("weights", "{}")).items()}
        return cls(
            prompt=v.name,
            test=v.version[len(EXPERIMENT_PREFIX) :],
            label=meta.get("label", DEFAULT_LABEL),
            variants=variants,
            weights=weights,
            split_by=meta.get("split_by", "user"),
            control=meta.get("control", next(iter(variants), "")),
            status=v.status,
            act=meta.get("act") == "true",
        )


def _decode_version(record: Mapping[str, Any]) -> Version:
    event_time = record.get("event_time")
    updated = (
        int(event_time.timestamp() * 1_000_000)
        if isinstance(event_time, datetime)
        else int(event_time or 0)
    )
    return Version(
        kind=str(record["kind"]),
        name=str(record["name"]),
        version=str(record["version"]),
        status=str(record["status"]),
        labels=tuple(record.get("labels") or ()),
        base_model=record.get("base_model"),
        adapter_path=record.get("adapter_path"),
        template=record.get("template"),
        metadata=dict(record.get("metadata") or {}),
        updated_us=updated,
        event_id=str(record.get("event_id", "")),
    )


class RegistryState:
    """Every version, folded from registry records in topic order."""

    def __init__(self) -> None:
        self._versions: dict[str, Version] = {}
        self.revision = 0

    def apply(self, record: Mapping[str, Any]) -> Version:
        """Fold one decoded ``RegistryRecord``; returns the version it describes now."""
        version = _decode_version(record)
        self._versions[version.key] = version
        self.revision += 1
        return version

    def delete(self, key: str) -> None:
        """Fold a tombstone (a record with no value) for ``key``."""
        if self._versions.pop(key, None) is not None:
            self.revision += 1

    def get(self, kind: str, name: str, version: str) -> Version | None:
        return self._versions.get(record_key(kind, name, version))

    def all(self) -> list[Version]:
        return sorted(self._versions.values(), key=lambda v: (v.kind, v.name, _order(v.version)))

    def versions(self, kind: str, name: str) -> list[Version]:
        """The versions of one name, oldest first (experiments of a prompt left out)."""
        return [v for v in self.all() if v.kind == kind and v.name == name and not v.is_experiment]

    def names(self, kind: str) -> list[str]:
        return sorted({v.name for v in self._versions.values() if v.kind == kind})

    def active_model(self, name: str) -> Version | None:
        """The serving version of ``name``: the active one activated last (should records of
        two writers race, every reader still picks the same one)."""
        active = [v for v in self.versions("model", name) if v.status == "active"]
        return max(
            active, key=lambda v: (v.micros("activated_at") or 0, v.updated_us), default=None
        )

    def prompt(self, name: str, *, label: str | None = None, version: str | None = None) -> Version:
        """A prompt version by number, or the one holding ``label`` (``production`` default)."""
        if version is not None:
            found = self.get("prompt", name, version)
            if found is None or found.is_experiment:
                raise RegistryError(f"prompt {name!r} has no version {version!r}")
            return found
        label = label or DEFAULT_LABEL
        holders = [v for v in self.versions("prompt", name) if label in v.labels]
        if not holders:
            known = self.names("prompt")
            if name not in known:
                raise RegistryError(f"no prompt named {name!r} (known: {known})")
            raise RegistryError(f"no version of prompt {name!r} has the label {label!r}")
        return max(holders, key=lambda v: (v.micros(f"label.{label}.since") or 0, v.updated_us))

    def experiments(self, prompt: str | None = None) -> list[Experiment]:
        return [
            Experiment.from_version(v)
            for v in self.all()
            if v.is_experiment and (prompt is None or v.name == prompt)
        ]

    def experiment(self, prompt: str, label: str) -> Experiment | None:
        """The running A/B test on a prompt's label, if any."""
        running = [
            e for e in self.experiments(prompt) if e.status == "running" and e.label == label
        ]
        return running[0] if running else None

    def find_experiment(self, test: str) -> Experiment:
        for e in self.experiments():
            if e.test == test:
                return e
        raise RegistryError(f"no A/B test named {test!r}")


def _order(version: str) -> tuple[int, int, str]:
    """Numeric versions in number order, others after them by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def next_version(state: RegistryState, kind: str, name: str) -> str:
    numbers = [int(v.version) for v in state.versions(kind, name) if v.version.isdigit()]
    return str(max(numbers, default=0) + 1)


def _time(now_us: int) -> datetime:
    return datetime.fromtimestamp(now_us / 1_000_000, UTC)


def build_record(v: Version, *, now: int, reason: str = "") -> dict[str, Any]:
    """The ``RegistryRecord`` that sets version ``v``; its id is derived from the change."""
    metadata = dict(v.metadata)
    if reason:
        metadata["reason"] = reason
    ident = json.dumps([v.key, v.status, sorted(v.labels), sorted(metadata.items()), now])
    record = envelope(
        REGISTRY_APP,
        event_time=_time(now),
        event_id=str(uuid.uuid5(ID_NAMESPACE, ident)),
    )
    record.update(
        name=v.name,
        kind=v.kind,
        version=v.version,
        status=v.status,
        labels=list(v.labels),
        base_model=v.base_model,
        adapter_path=v.adapter_path,
        template=v.template,
        metadata=metadata,
    )
    return record


def _with(v: Version, **changes: Any) -> Version:
    meta = dict(v.metadata)
    for name in changes.pop("drop", ()):
        meta.pop(name, None)
    meta.update(changes.pop("meta", {}))
    return Version(
        kind=v.kind,
        name=v.name,
        version=v.version,
        status=changes.pop("status", v.status),
        labels=tuple(changes.pop("labels", v.labels)),
        base_model=v.base_model,
        adapter_path=v.adapter_path,
        template=v.template,
        metadata=meta,
        updated_us=v.updated_us,
        event_id=v.event_id,
    )


# -- models -------------------------------------------------------------------------------


def push_model(
    state: RegistryState,
    name: str,
    *,
    base_model: str,
    adapter_path: str | None = None,
    version: str | None = None,
    metadata: Mapping[str, str] | None = None,
    now: int,
) -> list[dict[str, Any]]:
    """Register a new model version as a candidate."""
    _check_name(name)
    version = version or next_version(state, "model", name)
    if state.get("model", name, version) is not None:
        raise RegistryError(f"model {name!r} already has a version {version!r}")
    v = Version(
        kind="model",
        name=name,
        version=version,
        status="candidate",
        base_model=base_model,
        adapter_path=adapter_path,
        metadata={**(metadata or {}), "registered_at": str(now)},
    )
    return [build_record(v, now=now)]


def _model(state: RegistryState, name: str, version: str) -> Version:
    found = state.get("model", name, version)
    if found is None:
        known = [v.version for v in state.versions("model", name)]
        raise RegistryError(f"model {name!r} has no version {version!r} (known: {known})")
    return found


def promote_model(
    state: RegistryState, name: str, version: str, *, now: int, reason: str = ""
) -> list[dict[str, Any]]:
    """Make ``version`` the serving one; the one serving before is superseded (still good).
    Promoting the active version again writes nothing."""
    target = _model(state, name, version)
    current = state.active_model(name)
    if current is not None and current.version == version:
        return []
    records = []
    if current is not None:
        records.append(_deactivate(current, now, "superseded", reason))
    records.append(
        build_record(
            _with(
                target,
                status="active",
                meta={
                    "activated_at": str(now),
                    "previous": current.version if current else "",
                },
                drop=DEACTIVATION,
            ),
            now=now,
            reason=reason,
        )
    )
    return records


def _deactivate(v: Version, now: int, why: str, reason: str = "") -> dict[str, Any]:
    return build_record(
        _with(v, status="retired", meta={"deactivated_at": str(now), "deactivated_reason": why}),
        now=now,
        reason=reason,
    )


def retire_model(
    state: RegistryState, name: str, version: str, *, now: int, reason: str = ""
) -> list[dict[str, Any]]:
    """Take a candidate or retired version out for good (the active one: promote or roll back
    first, so something keeps serving)."""
    target = _model(state, name, version)
    if target.status == "active":
        raise RegistryError(
            f"{target.describe()} is serving; promote another version or roll back first"
        )
    return [_deactivate(target, now, "retired", reason)]


@dataclass(frozen=True)
class RollbackPlan:
    """What a rollback does: the records to write, or why it does nothing."""

    records: list[dict[str, Any]]
    from_version: str | None
    to_version: str | None
    outcome: Literal["rolled_back", "skipped", "failed"]
    detail: str


def known_good(state: RegistryState, name: str) -> Version | None:
    """The version a rollback returns to: the last one that stopped serving because another
    was promoted over it (never one rolled back for cause, never a candidate)."""
    good = [
        v
        for v in state.versions("model", name)
        if v.status == "retired" and v.metadata.get("deactivated_reason") == "superseded"
    ]
    return max(good, key=lambda v: v.micros("deactivated_at") or 0, default=None)


def rollback_model(
    state: RegistryState,
    name: str,
    *,
    now: int,
    expected_version: str | None = None,
    evidence_until: int | None = None,
    reason: str = "",
    request_id: str = "",
) -> RollbackPlan:
    """Roll ``name`` back from its serving version to the last known-good one.

    Idempotent: a rollback whose evidence no longer concerns the serving version does nothing.
    ``expected_version`` (the version the evidence was about) must still be serving, and a
    version activated after ``evidence_until`` (microseconds: the end of the evidence window)
    is not blamed for it. So a request delivered twice, or two alerts about one bad version,
    roll back once.
    """
    current = state.active_model(name)
    if current is None:
        return RollbackPlan([], None, None, "skipped", f"model {name!r} has no serving version")
    if expected_version is not None and current.version != expected_version:
        return RollbackPlan(
            [],
            current.version,
            None,
            "skipped",
            f"{name} serves version {current.version}, not {expected_version}: already rolled "
            "back or replaced",
        )
    activated = current.micros("activated_at")
    if evidence_until is not None and activated is not None and activated > evidence_until:
        return RollbackPlan(
            [],
            current.version,
            None,
            "skipped",
            f"{name}@{current.version} was activated after the evidence ended: already rolled "
            "back or replaced",
        )
    good = known_good(state, name)
    if good is None:
        return RollbackPlan(
            [], current.version, None, "failed", f"{name} has no known-good version to return to"
        )
    meta = {"deactivated_at": str(now), "deactivated_reason": "rolled_back"}
    if request_id:
        meta["rolled_back_by"] = request_id
    records = [
        build_record(_with(current, status="retired", meta=meta), now=now, reason=reason),
        build_record(
            _with(
                good,
                status="active",
                meta={"activated_at": str(now), "previous": current.version},
                drop=DEACTIVATION,
            ),
            now=now,
            reason=reason,
        ),
    ]
    return RollbackPlan(
        records,
        current.version,
        good.version,
        "rolled_back",
        f"{name} rolled back from version {current.version} to {good.version}",
    )


# -- prompts ------------------------------------------------------------------------------


def push_prompt(
    state: RegistryState,
    name: str,
    template: str,
    *,
    labels: Sequence[str] = (),
    version: str | None = None,
    metadata: Mapping[str, str] | None = None,
    now: int,
) -> list[dict[str, Any]]:
    """Register a new prompt version; labels given move to it at once."""
    _check_name(name)
    if not template.strip():
        raise RegistryError("a prompt template cannot be empty")
    version = version or next_version(state, "prompt", name)
    if version.startswith(EXPERIMENT_PREFIX) or state.get("prompt", name, version) is not None:
        raise RegistryError(f"prompt {name!r} already has a version {version!r}")
    v = Version(
        kind="prompt",
        name=name,
        version=version,
        status="active",
        template=template,
        metadata={**(metadata or {}), "registered_at": str(now)},
    )
    scratch = _Scratch(state)
    scratch.put(v)
    for label in labels:
        _move_label(scratch, name, version, label, now)
    return scratch.records(now)


class _Scratch:
    """Changes to several versions planned together, each written once."""

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.changed: dict[str, Version] = {}

    def get(self, kind: str, name: str, version: str) -> Version | None:
        return self.changed.get(record_key(kind, name, version)) or self.state.get(
            kind, name, version
        )

    def put(self, v: Version) -> None:
        self.changed[v.key] = v

    def holders(self, name: str, label: str) -> list[Version]:
        merged = {v.key: v for v in self.state.versions("prompt", name)}
        merged.update({k: v for k, v in self.changed.items() if v.name == name})
        return [v for v in merged.values() if label in v.labels and not v.is_experiment]

    def records(self, now: int) -> list[dict[str, Any]]:
        return [build_record(v, now=now) for v in self.changed.values()]


def _move_label(scratch: _Scratch, name: str, version: str, label: str, now: int) -> None:
    _check_name(label)
    target = scratch.get("prompt", name, version)
    if target is None or target.is_experiment:
        raise RegistryError(f"prompt {name!r} has no version {version!r}")
    for holder in scratch.holders(name, label):
        if holder.version != version:
            scratch.put(
                _with(
                    holder,
                    labels=[x for x in holder.labels if x != label],
                    meta={f"label.{label}.until": str(now)},
                )
            )
    if label not in target.labels:
        scratch.put(
            _with(
                target,
                labels=[*target.labels, label],
                meta={f"label.{label}.since": str(now)},
            )
        )


def label_prompt(
    state: RegistryState, name: str, version: str, label: str, *, now: int
) -> list[dict[str, Any]]:
    """Move ``label`` to ``version`` (promote a prompt): its previous holder loses it."""
    scratch = _Scratch(state)
    _move_label(scratch, name, version, label, now)
    return scratch.records(now)


def rollback_prompt(
    state: RegistryState, name: str, label: str = DEFAULT_LABEL, *, now: int
) -> tuple[list[dict[str, Any]], str]:
    """Move ``label`` back to the version that held it before the current one."""
    current = state.prompt(name, label=label)
    before = [
        v
        for v in state.versions("prompt", name)
        if v.version != current.version and v.micros(f"label.{label}.until") is not None
    ]
    previous = max(before, key=lambda v: v.micros(f"label.{label}.until") or 0, default=None)
    if previous is None:
        raise RegistryError(f"no earlier version of prompt {name!r} held the label {label!r}")
    return label_prompt(state, name, previous.version, label, now=now), previous.version


# -- A/B tests ----------------------------------------------------------------------------


def start_experiment(
    state: RegistryState,
    prompt: str,
    test: str,
    variants: Mapping[str, str],
    *,
    weights: Mapping[str, float] | None = None,
    split_by: str = "user",
    label: str = DEFAULT_LABEL,
    control: str | None = None,
    act: bool = False,
    now: int,
) -> list[dict[str, Any]]:
    """Start an A/B test: requests for ``prompt`` at ``label`` get one of ``variants``
    (variant name to prompt version), sticky per user or session, in proportion to
    ``weights`` (equal by default). With ``act``, the action service acts on the test's
    report by itself: it promotes a winner, or keeps the control, and ends the test."""
    _check_name(test)
    if len(variants) < 2:
        raise RegistryError(f"an A/B test needs at least two variants, got {dict(variants)}")
    for variant, version in variants.items():
        _check_name(variant)
        state.prompt(prompt, version=version)
    if split_by not in SPLIT_UNITS:
        raise RegistryError(f"split_by must be one of {SPLIT_UNITS}, got {split_by!r}")
    weights = dict(weights or {v: 1.0 for v in variants})
    if set(weights) != set(variants) or any(w <= 0 for w in weights.values()):
        raise RegistryError(
            f"weights must give a positive weight to each variant {sorted(variants)}, got {weights}"
        )
    control = control or next(iter(variants))
    if control not in variants:
        raise RegistryError(f"control {control!r} is not one of the variants {sorted(variants)}")
    if any(e.test == test for e in state.experiments()):
        raise RegistryError(f"an A/B test named {test!r} exists already")
    running = state.experiment(prompt, label)
    if running is not None:
        raise RegistryError(
            f"A/B test {running.test!r} already runs on {prompt!r} at label {label!r}; "
            "stop it first"
        )
    total = sum(weights.values())
    v = Version(
        kind="prompt",
        name=prompt,
        version=EXPERIMENT_PREFIX + test,
        status="running",
        metadata={
            "variants": json.dumps(dict(variants), sort_keys=True),
            "weights": json.dumps({k: w / total for k, w in weights.items()}, sort_keys=True),
            "split_by": split_by,
            "label": label,
            "control": control,
            "started_at": str(now),
            "act": "true" if act else "false",
        },
    )
    return [build_record(v, now=now)]


def stop_experiment(
    state: RegistryState, test: str, *, now: int, reason: str = ""
) -> list[dict[str, Any]]:
    """Stop an A/B test: its label serves the labelled version again."""
    e = state.find_experiment(test)
    v = state.get("prompt", e.prompt, EXPERIMENT_PREFIX + test)
    assert v is not None
    if v.status == "stopped":
        return []
    return [
        build_record(
            _with(v, status="stopped", meta={"stopped_at": str(now)}), now=now, reason=reason
        )
    ]


def assign_variant(experiment: Experiment, unit: str) -> str:
    """The variant of ``unit`` (a user or session hash): the same for the same unit and test,
    independent across tests, in proportion to the weights.

    >>> e = Experiment("p", "t", "production", {"a": "1", "b": "2"}, {"a": 0.5, "b": 0.5},
    ...                "user", "a", "running")
    >>> assign_variant(e, "user-1") == assign_variant(e, "user-1")
    True
    """
    digest = hashlib.sha256(f"{experiment.test}\x00{unit}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    names = sorted(experiment.weights)
    for name in names:
        cumulative += experiment.weights[name]
        if point < cumulative:
            return name
    return names[-1]


def _check_name(name: str) -> None:
    if not name or "/" in name or name != name.strip():
        raise RegistryError(f"names cannot be empty, contain '/' or spaces at the ends: {name!r}")


def fold(records: Iterable[Mapping[str, Any]], state: RegistryState | None = None) -> RegistryState:
    """A state with ``records`` applied in order."""
    state = state or RegistryState()
    for r in records:
        state.apply(r)
    return state
