"""The loopback receivers themselves (services/alerts/receiver.py): lifecycle, faults, threads."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from undertow.services.alerts.receiver import PagerDutyReceiver, SlackReceiver, WebhookReceiver
from undertow.services.alerts.webhook import WebhookChannel

from .fixtures import ROUTING_KEY, WEBHOOK_SECRET, make_alert


def test_start_stop_and_url() -> None:
    receiver = SlackReceiver()
    with pytest.raises(RuntimeError, match="not started"):
        _ = receiver.url
    with receiver:
        assert receiver.url.startswith("http://127.0.0.1:")
        assert receiver.url.endswith(SlackReceiver.path) and receiver.port > 0
        assert httpx.post(receiver.url, json={"text": "hi"}).text == "ok"
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{receiver.port}{SlackReceiver.path}", json={"text": "x"})


def test_only_post_is_served() -> None:
    with SlackReceiver() as receiver:
        assert httpx.get(receiver.url).status_code == 405
        assert receiver.requests == 0


def test_slack_answers_like_slack() -> None:
    with SlackReceiver() as receiver:
        assert httpx.post(receiver.url, content=b"not json").text == "invalid_payload"
        assert httpx.post(receiver.url, json={"username": "x"}).text == "no_text"
        bad = {"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 200}}]}
        response = httpx.post(receiver.url, json=bad)
        assert (response.status_code, response.text) == (400, "invalid_blocks")
        assert len(receiver.rejected) == 3 and receiver.accepted == []
        assert "200 characters, at most 150" in receiver.rejected[2].reasons[0]


def test_pagerduty_answers_like_pagerduty_and_keeps_incidents() -> None:
    with PagerDutyReceiver(routing_key=ROUTING_KEY) as receiver:
        trigger = {
            "routing_key": ROUTING_KEY,
            "event_action": "trigger",
            "payload": {"summary": "s", "source": "x", "severity": "info"},
        }
        answer = httpx.post(receiver.url, json=trigger)
        assert answer.status_code == 202
        body = answer.json()
        assert body["status"] == "success" and body["message"] == "Event processed"
        generated = body["dedup_key"]
        assert len(generated) == 32  # PagerDuty makes one up when none is given
        resolve = {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": generated}
        assert httpx.post(receiver.url, json=resolve).status_code == 202
        assert receiver.incidents == {generated: "resolved"}
        refused = httpx.post(receiver.url, json={"event_action": "trigger"})
        assert refused.status_code == 400
        assert refused.json()["status"] == "invalid event"
        assert any("routing_key" in e for e in refused.json()["errors"])


def test_webhook_takes_each_idempotency_key_once() -> None:
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        channel = WebhookChannel(receiver.url, WEBHOOK_SECRET)
        request = channel.request(make_alert())
        for _ in range(3):
            response = httpx.post(request.url, headers=dict(request.headers), content=request.body)
            assert response.status_code == 200
        assert len(receiver.accepted) == 1 and len(receiver.duplicates) == 2
        forged = dict(request.headers)
        forged["Undertow-Signature"] = "sha256=" + "0" * 64
        response = httpx.post(request.url, headers=forged, content=request.body)
        assert response.status_code == 401
        assert "does not match" in json.loads(response.text)["errors"][0]
        wrong = WebhookChannel(receiver.url, "another-secret-0123456789").request(make_alert())
        response = httpx.post(wrong.url, headers=dict(wrong.headers), content=wrong.body)
        assert response.status_code == 401
        assert len(receiver.rejected) == 2


def test_faults_apply_in_script_order_one_per_request() -> None:
    with SlackReceiver() as receiver:
        receiver.fail(1, status=503)
        receiver.throttle(1, retry_after=2.5)
        receiver.fail(1, status=502)
        answers = [httpx.post(receiver.url, json={"text": "x"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [503, 429, 502, 200]
        assert answers[1].headers["Retry-After"] == "2.5"
        assert [f.fault.kind for f in receiver.faulted] == ["status", "throttle", "status"]
        assert receiver.faults_left == 0 and len(receiver.accepted) == 1


def test_a_hang_drops_the_request_unanswered_once_released() -> None:
    receiver = SlackReceiver().start()
    receiver.hang(1, seconds=30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(receiver.url, json={"text": "x"}, timeout=0.3)
    receiver.wait_for(lambda r: len(r.faulted) == 1, timeout=5)
    assert receiver.accepted == []
    receiver.stop()  # releases the hung handler; must not wait out its 30 s


def test_concurrent_requests_are_all_recorded() -> None:
    with SlackReceiver() as receiver:
        receiver.fail(10)

        def post(i: int) -> None:
            with httpx.Client() as client:
                for j in range(5):
                    client.post(receiver.url, json={"text": f"{i}-{j}"})

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert receiver.requests == 40
        assert len(receiver.faulted) == 10 and len(receiver.accepted) == 30
        texts = {r.payload["text"] for r in receiver.accepted}
        texts |= {f.request.payload["text"] for f in receiver.faulted}
        assert len(texts) == 40


def test_wait_for_raises_with_what_came_at_its_deadline() -> None:
    with SlackReceiver() as receiver:
        httpx.post(receiver.url, json={})
        with pytest.raises(TimeoutError, match="1 requests: 0 accepted, 1 rejected"):
            receiver.wait_accepted(1, timeout=0.2)
