"""The A/B policy: reads the report of every running test marked ``act`` and turns a decision
into an action request, so a test ends itself once its evidence is in.

* ``promote``: request a ``promote`` of the winner's prompt version to the test's label;
* ``stop``: request a ``promote`` of the control's version (the label stays, or returns, there);

each with the ``ab_test`` parameter, so the promote worker also ends the test. Request ids
derive from the test and the decision, so a test reviewed again before the worker acted asks
once (the action service answers a request id once). ``continue`` requests nothing. The action
service runs :func:`review` every ``UNDERTOW_ACTIONS_AB_REVIEW_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from undertow.schemas.events import action
from undertow.services.experiments.analysis import ExperimentError
from undertow.services.experiments.observations import report

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from undertow.services.registry.state import Experiment, RegistryState

log = logging.getLogger("undertow.services.experiments")
REVIEW_NAMESPACE = uuid.UUID("5d2b9c7e-8a41-4f36-b0e2-91c4d7a3e6f8")


def review(
    state: RegistryState, client: Client, *, alpha: float = 0.05, min_samples: int = 100
) -> list[dict[str, Any]]:
    """The action requests the running, ``act``-marked tests' reports call for now."""
    requests = []
    for experiment in state.experiments():
        if experiment.status != "running" or not experiment.act:
            continue
        try:
            result = report(client, experiment, None, alpha=alpha, min_samples=min_samples)
        except ExperimentError as exc:
            log.warning("A/B test %s not reviewed: %s", experiment.test, exc)
            continue
        if result.decision == "continue":
            continue
        variant = result.winner if result.decision == "promote" else experiment.control
        if variant is None:
            continue
        requests.append(_request(experiment, result.decision, variant, result.reason))
        log.info("A/B test %s: %s (%s)", experiment.test, result.decision, variant)
    return requests


def _request(experiment: Experiment, decision: str, variant: str, why: str) -> dict[str, Any]:
    return action(
        action_type="promote",
        target=experiment.prompt,
        reason=f"A/B test {experiment.test}: {decision}: {why}"[:1000],
        parameters={
            "kind": "prompt",
            "version": experiment.variants[variant],
            "label": experiment.label,
            "ab_test": experiment.test,
            "ab_decision": decision,
            "ab_variant": variant,
        },
        event_id=str(uuid.uuid5(REVIEW_NAMESPACE, f"{experiment.test}:{decision}:{variant}")),
    )
