"""The Slack message (services/alerts/slack.py): content, escaping, and Slack's limits."""

from __future__ import annotations

import re
from typing import Any

import pytest

from undertow.services.alerts import Notification
from undertow.services.alerts.receiver import validate_slack_message
from undertow.services.alerts.slack import SlackChannel, code_block, escape, mrkdwn

from .fixtures import NASTY, huge_alert, make_alert

URL = "https://hooks.slack.com/services/T000/B000/secret-token"
ENTITY = re.compile(r"&(?!amp;|lt;|gt;)")


@pytest.fixture
def slack() -> SlackChannel:
    return SlackChannel(URL)


def texts(message: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) of every text object in the blocks."""
    found: list[tuple[str, str]] = []
    for i, block in enumerate(message["blocks"]):
        if "text" in block:
            found.append((f"{i}.{block['type']}", block["text"]["text"]))
        for j, item in enumerate(block.get("fields", [])):
            found.append((f"{i}.field{j}", item["text"]))
        for j, item in enumerate(block.get("elements", [])):
            if "text" in item:
                value = item["text"] if isinstance(item["text"], str) else item["text"]["text"]
                found.append((f"{i}.element{j}", value))
    return found


def test_a_firing_alert_has_every_part(slack: SlackChannel) -> None:
    alert = make_alert(severity="critical")
    message = slack.message(alert)
    kinds = [b["type"] for b in message["blocks"]]
    assert kinds == ["header", "section", "section", "section", "section", "actions", "context"]
    header = message["blocks"][0]["text"]
    assert header["type"] == "plain_text"
    assert header["text"] == ":red_circle: CRITICAL  Toxic answers above threshold"
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert fields[:5] == [
        "*Severity*\ncritical",
        "*Status*\nfiring",
        "*App*\nchat (production)",
        "*Segment*\nmodel=gpt-x/prompt=v3",
        "*Rule*\ntoxicity_p95 &gt; 0.8",
    ]
    assert fields[5].startswith(f"*Since*\n<!date^{int(alert.event_time.timestamp())}^")
    evidence = message["blocks"][3]["text"]["text"]
    assert evidence == "*Evidence*\n• events: 1200\n• toxicity_p95: 0.91\n• window: 5m"
    query = message["blocks"][4]["text"]["text"]
    assert query == (
        "*Query*\n```\nSELECT count() FROM scores WHERE toxicity &gt; 0.8 AND app = 'chat'\n```"
    )
    button = message["blocks"][5]["elements"][0]
    assert button["url"] == alert.runbook_url and button["style"] == "danger"
    assert "`tox:chat`" in message["blocks"][6]["elements"][0]["text"]
    assert message["text"].startswith("[CRITICAL] firing: Toxic answers above threshold")
    assert validate_slack_message(message) == []


def test_a_resolved_alert_says_so_without_evidence(slack: SlackChannel) -> None:
    message = slack.message(make_alert(status="resolved"))
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "context"]
    assert message["blocks"][0]["text"]["text"].startswith(":white_check_mark: Resolved")
    assert message["text"].startswith("[RESOLVED] Toxic answers above threshold")
    assert "*Resolved*" in message["blocks"][1]["fields"][5]["text"]
    assert validate_slack_message(message) == []


def test_every_limit_holds_for_an_alert_far_past_them(slack: SlackChannel) -> None:
    message = slack.message(huge_alert())
    assert validate_slack_message(message) == []
    header = message["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")
    assert 0 < len(message["text"]) <= 3000
    assert len(message["blocks"]) <= 50
    for block in message["blocks"]:
        if block["type"] == "section":
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
            assert len(block.get("text", {}).get("text", "")) <= 3000
    # The evidence section says how many entries it could not show.
    evidence = next(t for _, t in texts(message) if t.startswith("*Evidence*"))
    assert re.search(r"…and \d+ more$", evidence)
    # The SQL block keeps its closing fence, and the fence inside the query is defused.
    query = next(t for _, t in texts(message) if t.startswith("*Query*"))
    assert query.startswith("*Query*\n```\n") and query.endswith("…\n```")
    assert query.count("```") == 2
    # A runbook URL too long for a button is shown as text instead.
    assert not any(b["type"] == "actions" for b in message["blocks"])


def test_mrkdwn_is_escaped_and_no_cut_splits_an_entity(slack: SlackChannel) -> None:
    message = slack.message(huge_alert())
    for where, text in texts(message):
        if where.endswith("header"):
            continue
        assert not ENTITY.search(text), where
        assert "<script>" not in text, where
    for limit in range(1, 40):
        cut = mrkdwn("<&>" * 20, limit)
        assert len(cut) <= limit
        assert re.fullmatch(r"(&lt;|&amp;|&gt;)*", cut.removesuffix("…")), cut


def test_escape_and_code_block_helpers() -> None:
    assert escape("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert mrkdwn("short", 10) == "short"
    assert mrkdwn("x" * 20, 10) == "x" * 9 + "…"
    block = code_block("select ```x``` < 1", 100)
    assert block == "```\nselect `\u200b``x`\u200b`` &lt; 1\n```"
    assert len(code_block("y" * 5000, 300)) == 300


def test_a_storm_is_one_message_listing_the_worst_first(slack: SlackChannel) -> None:
    alerts = [make_alert(key=f"k{i}", severity="warning") for i in range(4)]
    alerts.append(make_alert(key="crit", severity="critical", summary="Injection spike"))
    message = slack.message(Notification(tuple(alerts)))
    assert message["blocks"][0]["text"]["text"] == ":rotating_light: 5 alerts firing"
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert "*Critical*\n1" in fields and "*Warning*\n4" in fields
    listing = message["blocks"][2]["text"]["text"].split("\n")
    assert len(listing) == 5
    assert listing[0].startswith(":red_circle: *Injection spike*")
    assert all(f"key `k{i}`" in message["blocks"][2]["text"]["text"] for i in range(4))
    assert message["blocks"][-1]["elements"][0]["text"] == "5 alerts grouped"
    assert message["text"].startswith("5 alerts firing: Injection spike;")
    assert validate_slack_message(message) == []


def test_a_huge_storm_lists_max_listed_and_counts_the_rest() -> None:
    slack = SlackChannel(URL, max_listed=7)
    alerts = tuple(huge_alert(dedup_key=f"key-{i}", severity="error") for i in range(120))
    message = slack.message(Notification(alerts))
    assert validate_slack_message(message) == []
    listed = sum(t.count("\n") + 1 for w, t in texts(message) if w.endswith("section"))
    assert listed == 7
    assert "…and 113 more not listed" in message["blocks"][-1]["elements"][0]["text"]
    assert message["text"].endswith("; …")


def test_resolved_storms_group_too(slack: SlackChannel) -> None:
    alerts = tuple(make_alert(key=f"k{i}", status="resolved") for i in range(3))
    message = slack.message(Notification(alerts))
    assert message["blocks"][0]["text"]["text"] == ":white_check_mark: 3 alerts resolved"
    assert validate_slack_message(message) == []


def test_nasty_text_stays_inside_its_text_objects(slack: SlackChannel) -> None:
    message = slack.message(make_alert(summary=NASTY, rule=NASTY, segment=NASTY))
    assert validate_slack_message(message) == []
    section = message["blocks"][2]["text"]["text"]
    assert section.startswith("Tox &lt;script&gt;&amp;amp; `a`")
    # Links and mentions cannot be smuggled in: every < is escaped in mrkdwn.
    assert "<http://x|y>" not in section


def test_optional_parts_are_left_out(slack: SlackChannel) -> None:
    message = slack.message(
        make_alert(evidence={}, sql=None, runbook_url=None, segment="", environment="")
    )
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert "*Segment*\n—" in fields and "*App*\nchat" in fields


def test_username_and_icon_are_optional() -> None:
    plain = SlackChannel(URL).message(make_alert())
    assert "username" not in plain and "icon_emoji" not in plain
    styled = SlackChannel(URL, username="Undertow", icon_emoji=":ocean:").message(make_alert())
    assert styled["username"] == "Undertow" and styled["icon_emoji"] == ":ocean:"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_listed"):
        SlackChannel(URL, max_listed=0)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({}, "no_text"),
        ({"text": "   "}, "no_text"),
        ({"blocks": []}, "no_text"),
        ({"text": "x" * 40_001}, "at most 40000"),
        ({"blocks": [{"type": "divider"}] * 51}, "at most 50"),
        ({"blocks": [{"type": "banner"}]}, "unknown block type"),
        (
            {"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]},
            "151 characters, at most 150",
        ),
        (
            {"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]},
            "expected one of ['plain_text']",
        ),
        (
            {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "s" * 3001}}]},
            "3001 characters, at most 3000",
        ),
        (
            {"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]},
            "1..10 text objects",
        ),
        ({"blocks": [{"type": "section"}]}, "needs text or fields"),
        (
            {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]},
            "non-empty string",
        ),
        (
            {
                "blocks": [
                    {
                        "type": "actions",
                        "elements": [
                            {
                                "type": "button",
                                "text": {"type": "plain_text", "text": "b" * 76},
                                "url": "https://x",
                            }
                        ],
                    }
                ]
            },
            "76 characters, at most 75",
        ),
        (
            {
                "blocks": [
                    {"type": "divider", "block_id": "a"},
                    {"type": "divider", "block_id": "a"},
                ]
            },
            "used twice",
        ),
    ],
)
def test_the_validator_refuses_what_slack_refuses(message: dict[str, Any], reason: str) -> None:
    errors = validate_slack_message(message)
    assert any(reason in e for e in errors), errors
