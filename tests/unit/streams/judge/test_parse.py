"""Parsing judge replies (streams/judge/parse.py): a table of real-looking outputs."""

from __future__ import annotations

import pytest

from undertow.streams.judge.parse import parse_verdict

SCALE = (1, 5)

# (reply, raw score) for replies that must be read.
READABLE = [
    ('{"score": 4, "reason": "Answers the question directly."}', 4),
    ('```json\n{"score": 5, "reason": "Complete."}\n```', 5),
    ('```\n{"score": 2}\n```', 2),
    ('Sure! Here is my evaluation:\n{"score": 3, "reason": "Partly relevant."}\nHope it helps.', 3),
    ('{"reason": "Off topic.", "score": 1}', 1),
    ('{"score": "4", "reason": "fine"}', 4),
    ('{"score": "4/5"}', 4),
    ('{"rating": 5}', 5),
    ('{"relevance": {"score": 2, "reason": "vague"}}', 2),
    ("{'score': 3, 'reason': 'meh'}", 3),
    ("Score: 4", 4),
    ("score: 4\nReason: the answer covers the question.", 4),
    ("**Score:** 5", 5),
    ("**Score**: 5\n\nThe response is clear.", 5),
    ("Rating: 4 out of 5", 4),
    ("Rating: 4/5 - mostly relevant", 4),
    ("The score is 2.", 2),
    ("score = 3/5", 3),
    ("4/5", 4),
    ("I would rate this answer 4 out of 5.", 4),
    ("4", 4),
    ("4.", 4),
    ("**4**", 4),
    ("  5  \n", 5),
    ("3\n\nThe answer is somewhat relevant but misses details.", 3),
    ("Score: 4.5/5", 4.5),
    ("Score: 4\nReason: it lists 3/3 requested items.", 4),
    ("Score: 4. Repeating: score: 4.", 4),
    ("Published 2024/05/01. Score: 2", 2),
    ("SCORE: 1", 1),
]


@pytest.mark.parametrize(("reply", "raw"), READABLE)
def test_readable_replies_give_the_stated_score(reply: str, raw: float) -> None:
    verdict = parse_verdict(reply, SCALE)
    assert verdict.error is None, verdict.error
    assert verdict.ok
    assert verdict.raw_score == raw
    assert verdict.score == pytest.approx((raw - 1) / 4)
    assert 0.0 <= verdict.score <= 1.0


# (reply, start of the error) for replies that must not be read.
UNREADABLE = [
    ("", "empty reply"),
    ("   \n ", "empty reply"),
    ("The answer is relevant and helpful.", "no score found"),
    ("I cannot evaluate this.", "no score found"),
    ('{"reason": "fine"}', "no score found"),
    ("Score: 3. On second thought, Score: 4.", "ambiguous"),
    ('{"score": 3} but really 4/5', "ambiguous"),
    ("4/5 for relevance, 2/5 for style", "ambiguous"),
    ('{"score": 2}\n{"score": 5}', "ambiguous"),
    ("Score: 7", "out of scale"),
    ("Score: 0", "out of scale"),
    ("Score: -1", "out of scale"),
    ("8/10", "out of scale"),
    ("Rating: 4 out of 10", "out of scale"),
    ('{"score": 9}', "out of scale"),
    ("6", "out of scale"),
    ('{"score": "high"}', "JSON score is"),
    ('{"score": null, "reason": "cannot judge"}', "JSON score is"),
    ('{"score": true}', "JSON score is"),
    ('{"score": [4]}', "JSON score is"),
]


@pytest.mark.parametrize(("reply", "error"), UNREADABLE)
def test_unreadable_replies_are_failures_with_a_reason(reply: str, error: str) -> None:
    verdict = parse_verdict(reply, SCALE)
    assert not verdict.ok
    assert verdict.score is None and verdict.raw_score is None
    assert verdict.error is not None and verdict.error.startswith(error), verdict.error


def test_ambiguity_names_both_scores() -> None:
    verdict = parse_verdict("Score: 3. On second thought, Score: 4.", SCALE)
    assert verdict.error == "ambiguous: the reply gives different scores 3 and 4"


def test_normalisation_follows_the_scale() -> None:
    assert parse_verdict("Score: 0", (0, 10)).score == 0.0
    assert parse_verdict("7/10", (0, 10)).score == pytest.approx(0.7)
    assert parse_verdict("Score: 10", (0, 10)).score == 1.0
    assert parse_verdict("Score: 2", (1, 3)).score == 0.5
    # 5 is the top of 1..5 but beyond 1..3
    assert parse_verdict("Score: 5", (1, 3)).error == "out of scale: score 5 is outside 1..3"


def test_reason_is_the_stated_one_else_the_reply_and_is_cut() -> None:
    assert parse_verdict('{"score": 4, "reason": " on topic "}', SCALE).reason == "on topic"
    assert parse_verdict("Score: 2\nReason: misses the point", SCALE).reason == "misses the point"
    assert parse_verdict("Nothing to say", SCALE).reason == "Nothing to say"
    long = '{"score": 4, "reason": "' + "x" * 900 + '"}'
    reason = parse_verdict(long, SCALE, max_reason_chars=100).reason
    assert len(reason) == 100 and reason.endswith("…")
