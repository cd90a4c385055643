"""The main job a newcomer sees: the whole pipeline on the local stack, with planted incidents.

``undertow demo`` starts the local stack (Kafka broker, ClickHouse engine), the stream workers
(ingest with the real scorers, drift, policy), the action workers, alert delivery to local
Slack, PagerDuty and webhook receivers, and the gateway serving SmolLM2 from the registry. It
then plays :mod:`undertow.services.scenario` traffic, a support assistant's, replayed in
compressed event time:

1. the usual traffic, from which a drift baseline is built (``undertow baseline build``);
2. more usual traffic, then a topic shift, a burst of prompt-injection attempts, rude answers
   and a cost spike from long pasted documents;
3. through the gateway: a LoRA version of the model is promoted and users rate it badly; the
   policy requests a rollback and the gateway serves the previous version again.

It shows live progress, then each planted incident, whether and when it was caught, the alert
delivered, the action taken and the SQL to look at it, and writes a self-contained HTML
report. The stack stays up afterwards (``undertow infra down`` stops it); the demo's workers
stop when it ends.

The report (:mod:`undertow.demo.report`) needs plotly (the ``report`` extra); it is imported
from there, not from here, so that ``undertow infra up`` (:func:`stack_table`) runs without it.
"""

from undertow.demo.run import APP, DemoError, DemoResult, run_demo, stack_table, traffic_app

__all__ = ["APP", "DemoError", "DemoResult", "run_demo", "stack_table", "traffic_app"]
