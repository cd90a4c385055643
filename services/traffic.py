"""Seeded synthetic LLM traffic: whole traces of prompt, retrieval, completion and feedback.

The same seed gives the same texts, timings and token counts (ids stay unique per call), so
demos and benchmarks are repeatable. Later scenarios (topic shift, injection bursts) build
on the same trace shape.

>>> events = list(sample_traces(2, seed=7, app="support-bot"))
>>> [e["body"][0].split(".")[-1] for e in events][:3]
['Prompt', 'Retrieval', 'Completion']
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from undertow.schemas.events import event, new_span_id, new_trace_id

_QUESTIONS = [
    ("billing", "How do I update the credit card on my account?"),
    ("billing", "Why was I charged twice this month?"),
    ("billing", "Can I get an invoice for last quarter?"),
    ("account", "How do I reset my password if I lost access to my e-mail?"),
    ("account", "Can I change the username on my profile?"),
    ("shipping", "Where is my order? The tracking page has not changed in three days."),
    ("shipping", "Do you ship to Canada and how long does it take?"),
    ("product", "Does the standard plan include API access?"),
    ("product", "What is the difference between the team and enterprise plans?"),
    ("product", "Is there a limit on how many projects I can create?"),
]
_ANSWERS = {
    "billing": "You can manage payment methods under Settings > Billing. {detail}",
    "account": "Open the sign-in page and choose 'Forgot password'. {detail}",
    "shipping": "Orders usually ship within two business days. {detail}",
    "product": "Every plan includes the core features; see the pricing page. {detail}",
}
_DETAILS = [
    "If anything looks wrong, reply here and a person will follow up.",
    "The change takes effect immediately and you will get a confirmation e-mail.",
    "Let me know if you need anything else.",
    "Our help center has a step-by-step guide with screenshots.",
]
_MODELS = [("smollm2-135m-instruct", "2024-11"), ("smollm2-135m-instruct", "2024-11-lora1")]


def sample_traces(
    n_traces: int,
    *,
    seed: int = 0,
    app: str = "support-bot",
    environment: str = "demo",
    start: datetime | None = None,
    feedback_rate: float = 0.3,
    attributes: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``event`` records, trace by trace: prompt, retrieval, completion, maybe feedback.

    Event times advance by about a second per trace from ``start`` (default: now minus the
    span of the run), so the traffic ends around the present.
    """
    rng = random.Random(seed)
    begin = start or datetime.now(UTC) - timedelta(seconds=n_traces)
    for i in range(n_traces):
        topic, question = rng.choice(_QUESTIONS)
        model, model_version = rng.choice(_MODELS)
        user = f"u{rng.randrange(50):04x}"
        common: dict[str, Any] = {
            "app": app,
            "environment": environment,
            "trace_id": new_trace_id(),
            "user_hash": f"sha256:{rng.getrandbits(64):016x}{user}",
            "session_hash": f"sha256:{rng.getrandbits(64):016x}",
            "attributes": {"topic": topic, **(attributes or {})},
        }
        at = begin + timedelta(seconds=i + rng.random() * 0.5)
        root = new_span_id()
        yield event(
            "prompt",
            {
                "messages": [
                    {"role": "system", "content": "You are a helpful support assistant."},
                    {"role": "user", "content": question},
                ],
                "model": model,
                "prompt_name": "support-answer",
                "prompt_version": "3",
            },
            span_id=root,
            event_time=at,
            **common,
        )
        retrieval_ms = rng.lognormvariate(3.0, 0.4)
        documents = [
            {
                "id": f"kb-{topic}-{rng.randrange(40):03d}",
                "score": round(0.9 - rank * 0.1 - rng.random() * 0.05, 4),
                "text": f"Help-center article about {topic}, section {rank + 1}.",
                "source": "kb://help-center",
            }
            for rank in range(3)
        ]
        yield event(
            "retrieval",
            {
                "query": question,
                "documents": documents,
                "store": "help-center",
                "latency_ms": round(retrieval_ms, 3),
                "top_k": 3,
            },
            parent_span_id=root,
            event_time=at + timedelta(milliseconds=retrieval_ms),
            **common,
        )
        answer = _ANSWERS[topic].format(detail=rng.choice(_DETAILS))
        latency = rng.lognormvariate(6.2, 0.35)
        input_tokens = 40 + len(question.split()) * 2 + 60
        output_tokens = len(answer.split()) * 4 // 3
        yield event(
            "completion",
            {
                "model": model,
                "model_version": model_version,
                "adapter": "support-lora-1" if model_version.endswith("lora1") else None,
                "prompt_name": "support-answer",
                "prompt_version": "3",
                "text": answer,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cached_tokens": 32 if rng.random() < 0.4 else 0,
                "latency_ms": round(latency, 3),
                "time_to_first_token_ms": round(latency * rng.uniform(0.1, 0.3), 3),
                "finish_reason": "stop",
            },
            parent_span_id=root,
            event_time=at + timedelta(milliseconds=retrieval_ms + latency),
            **common,
        )
        if rng.random() < feedback_rate:
            good = rng.random() < 0.8
            yield event(
                "feedback",
                {
                    "score": 1.0 if good else 0.0,
                    "label": "thumbs_up" if good else "thumbs_down",
                    "comment": None if good else "did not answer my question",
                    "source": "user",
                },
                parent_span_id=root,
                event_time=at + timedelta(seconds=5 + rng.random() * 30),
                **common,
            )
