"""Rollback and promote: action workers that change the model and prompt registry.

``rollback`` (target: a model name, or a prompt name with ``kind=prompt``) returns the target
to its last known-good version (:func:`~undertow.services.registry.state.rollback_model`).
It reads the registry afresh for every request and is idempotent: a request whose evidence no
longer concerns the serving version (``version`` parameter, or a ``window_end`` before the
serving version was activated) is skipped with the reason. ``promote`` makes a model version
serve (``version``) or moves a prompt label (``kind=prompt``, ``version``, ``label``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from undertow.services.actions.worker import ActionError, ActionWorker, Outcome, Progress, parameter
from undertow.services.registry.state import (
    DEFAULT_LABEL,
    RegistryError,
    label_prompt,
    promote_model,
    rollback_model,
    rollback_prompt,
    stop_experiment,
)


def _micros(iso: str | None, name: str) -> int | None:
    if iso is None:
        return None
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ActionError(f"parameter {name}: expected an ISO 8601 time, got {iso!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def _kind(request: Mapping[str, Any]) -> str:
    kind = parameter(request, "kind", "model")
    if kind not in ("model", "prompt"):
        raise ActionError(f"parameter kind: expected model or prompt, got {kind!r}")
    return kind or "model"


class RollbackWorker(ActionWorker):
    """Sets a model (or a prompt label) back to its last known-good version."""

    action_type = "rollback"

    def handle(self, request: Mapping[str, Any], progress: Progress) -> Outcome:
        target = str(request["target"])
        registry = self.context.registry
        state = registry.load()
        now = self.context.now_us()
        if _kind(request) == "prompt":
            label = parameter(request, "label", DEFAULT_LABEL) or DEFAULT_LABEL
            try:
                current = state.prompt(target, label=label).version
                records, previous = rollback_prompt(state, target, label, now=now)
            except RegistryError as exc:
                return Outcome("failed", str(exc))
            registry.publish(records)
            return Outcome(
                "succeeded",
                f"prompt {target} label {label} moved back from version {current} to {previous}",
                {"from_version": current, "to_version": previous, "label": label},
            )
        named = (request.get("parameters") or {}).get("version")
        if named is not None and not str(named).strip():
            # A rule's "{group field}" that came out empty: rolling back blind is not safe.
            return Outcome("failed", "the request names an empty version: nothing rolled back")
        plan = rollback_model(
            state,
            target,
            now=now,
            expected_version=parameter(request, "version"),
            evidence_until=_micros(parameter(request, "window_end"), "window_end"),
            reason=str(request.get("reason") or "")[:500],
            request_id=str(request["event_id"]),
        )
        result = {"from_version": plan.from_version or "", "to_version": plan.to_version or ""}
        if plan.outcome != "rolled_back":
            return Outcome(plan.outcome, plan.detail, result)
        registry.publish(plan.records)
        result["activated_at_us"] = str(now)
        return Outcome("succeeded", plan.detail, result)


class PromoteWorker(ActionWorker):
    """Makes a model version serve, or moves a prompt label to a version (an A/B winner)."""

    action_type = "promote"

    def handle(self, request: Mapping[str, Any], progress: Progress) -> Outcome:
        target = str(request["target"])
        version = parameter(request, "version")
        if version is None:
            raise ActionError("promote needs a version parameter")
        registry = self.context.registry
        state = registry.load()
        now = self.context.now_us()
        reason = str(request.get("reason") or "")[:500]
        try:
            if _kind(request) == "prompt":
                label = parameter(request, "label", DEFAULT_LABEL) or DEFAULT_LABEL
                records = label_prompt(state, target, version, label, now=now)
                what = f"prompt {target} label {label} on version {version}"
                test = parameter(request, "ab_test")
                if test is not None:  # an A/B decision: the test ends with it
                    records += stop_experiment(state, test, now=now, reason=reason)
                    what += f", A/B test {test} ended"
            else:
                records = promote_model(state, target, version, now=now, reason=reason)
                what = f"model {target} serves version {version}"
        except RegistryError as exc:
            return Outcome("failed", str(exc))
        if not records:
            return Outcome("skipped", f"{what} already", {"version": version})
        registry.publish(records)
        return Outcome("succeeded", what, {"version": version})
