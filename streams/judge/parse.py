"""Turn a judge model's reply into a score on the rubric's scale, or say why it cannot.

Judges answer in many shapes; these are understood:

* JSON, alone, in a ```json fence or with text around it: ``{"score": 4, "reason": "..."}``
  (also ``rating``, a nested ``{"relevance": {"score": 4}}``, numeric strings like ``"4"``);
* a labelled score: ``Score: 4``, ``**Rating:** 4 out of 5``, ``score = 4/5``;
* a fraction: ``4/5``, ``4 out of 5`` (the denominator must be the scale's top);
* a reply that is only a number (``4``, ``**4**``), or whose first line is.

Every score the reply states is collected. Two different ones (``Score: 3 ... Score: 4``) are
*ambiguous*, a value off the scale or a fraction of another scale is *out of scale*, no score
is *missing*: each is a failure with its reason, never a guessed score. Fractions inside a
``Reason:`` line (``it lists 3/3 items``) are not taken for scores.

>>> v = parse_verdict('```json\\n{"score": 4, "reason": "on topic"}\\n```', (1, 5))
>>> v.raw_score, v.score, v.reason
(4.0, 0.75, 'on topic')
>>> parse_verdict("Score: 3. Actually, Score: 4.", (1, 5)).error
'ambiguous: the reply gives different scores 3 and 4'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_REASON_CHARS = 500
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_KEYED = re.compile(
    rf"\b(?:score|rating|grade)\b[\"'*_\s]*(?:[:=]|\bis\b)?[\"'*_\s]*({_NUMBER})"
    rf"(?:\s*(?:/|out\s+of)\s*({_NUMBER}))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"(?<![\w./])({_NUMBER})\s*(?:/|\bout\s+of\b)\s*({_NUMBER})(?![./]?\d)")
_LONE = re.compile(rf"^[\s*_#`\"'(\[]*({_NUMBER})[\s*_`\"'.!)\]]*$")
_REASON_LINE = re.compile(
    r"\b(?:reason|reasoning|explanation|rationale|justification)\b\W{0,3}[:=-]\s*(.*)",
    re.IGNORECASE,
)
_SCORE_KEYS = ("score", "rating", "grade")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification")


@dataclass(frozen=True)
class Verdict:
    """The outcome of parsing one reply: a score (raw and normalised to 0..1) or an error.

    ``reason`` is the judge's stated reason, or, when it gave none, its reply (both cut to
    ``max_reason_chars``), so a failure can be read next to its cause.
    """

    raw_score: float | None
    score: float | None
    reason: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Candidate:
    value: float
    out_of: float | None
    where: str


def parse_verdict(
    text: str, scale: tuple[int, int], *, max_reason_chars: int = MAX_REASON_CHARS
) -> Verdict:
    """Parse a judge's reply for a score on ``scale`` (inclusive ``(low, high)``)."""
    low, high = scale
    reply = text.strip()
    if not reply:
        return Verdict(None, None, "", f"empty reply: expected a score from {low} to {high}")
    candidates, json_reason, problems, rest = _from_json(reply)
    keyed = [_Candidate(*_numbers(m), "label") for m in _KEYED.finditer(rest)]
    candidates += keyed
    keyed_spans = [m.span() for m in _KEYED.finditer(rest)]
    reason_spans = [m.span() for m in _REASON_LINE.finditer(rest)]
    for match in _FRACTION.finditer(rest):
        inside = [*keyed_spans, *reason_spans]
        if not any(start <= match.start() < end for start, end in inside):
            candidates.append(_Candidate(*_numbers(match), "fraction"))
    if not candidates and not problems:
        lone = _lone(rest)
        if lone is not None:
            candidates.append(lone)
    reason = _cut(json_reason or _labelled_reason(rest) or reply, max_reason_chars)
    if problems:  # the judge answered in JSON but its score is no number: nothing to trust
        return Verdict(None, None, reason, problems[0])
    if not candidates:
        return Verdict(
            None,
            None,
            reason,
            f'no score found: expected JSON {{"score": n}}, "Score: n" or "n/{high}" '
            f"with n from {low} to {high}",
        )
    values = sorted({c.value for c in candidates})
    if len(values) > 1:
        shown = " and ".join(_show(v) for v in values[:3])
        return Verdict(None, None, reason, f"ambiguous: the reply gives different scores {shown}")
    for c in candidates:
        if c.out_of is not None and c.out_of != high:
            return Verdict(
                None,
                None,
                reason,
                f"out of scale: {_show(c.value)}/{_show(c.out_of)} is on another scale; "
                f"expected a score out of {high}",
            )
    value = values[0]
    if not low <= value <= high:
        return Verdict(
            None,
            None,
            reason,
            f"out of scale: score {_show(value)} is outside {low}..{high}",
        )
    return Verdict(value, (value - low) / (high - low), reason)


def _numbers(match: re.Match[str]) -> tuple[float, float | None]:
    value = float(match.group(1))
    out_of = match.group(2)
    return value, float(out_of) if out_of is not None else None


def _from_json(text: str) -> tuple[list[_Candidate], str, list[str], str]:
    """Scores and reason of every JSON object in ``text``, problems found there, and the text
    with those objects cut out (for the other patterns)."""
    decoder = json.JSONDecoder()
    candidates: list[_Candidate] = []
    problems: list[str] = []
    reason = ""
    kept: list[str] = []
    pos = 0
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found, why, trouble = _scores_in(obj)
            candidates += found
            problems += trouble
            reason = reason or why
            kept.append(text[pos:i])
            kept.append(" ")
            pos = end
        i = text.find("{", end)
    kept.append(text[pos:])
    return candidates, reason, problems, "".join(kept)


def _scores_in(obj: dict[str, Any], depth: int = 0) -> tuple[list[_Candidate], str, list[str]]:
    candidates: list[_Candidate] = []
    problems: list[str] = []
    reason = ""
    for key, value in obj.items():
        name = str(key).strip().lower()
        if name in _SCORE_KEYS:
            candidate, problem = _json_score(name, value)
            if candidate is not None:
                candidates.append(candidate)
            if problem is not None:
                problems.append(problem)
        elif name in _REASON_KEYS and isinstance(value, str) and not reason:
            reason = value.strip()
        elif isinstance(value, dict) and depth < 2:
            found, why, trouble = _scores_in(value, depth + 1)
            candidates += found
            problems += trouble
            reason = reason or why
    return candidates, reason, problems


def _json_score(key: str, value: Any) -> tuple[_Candidate | None, str | None]:
    if isinstance(value, bool) or value is None:
        return None, f"JSON {key} is {json.dumps(value)}: expected a number"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None, f"JSON {key} is {value}: expected a finite number"
        return _Candidate(float(value), None, "json"), None
    if isinstance(value, str):
        text = value.strip()
        match = _FRACTION.fullmatch(text)
        if match is not None:
            return _Candidate(*_numbers(match), "json"), None
        if re.fullmatch(_NUMBER, text):
            return _Candidate(float(text), None, "json"), None
    return None, f"JSON {key} is {json.dumps(value)[:40]}: expected a number"


def _lone(text: str) -> _Candidate | None:
    """A reply that is one number, or whose first non-empty line is one."""
    stripped = text.strip().strip("`").strip()
    match = _LONE.match(stripped)
    if match is None:
        first = next((line for line in stripped.splitlines() if line.strip()), "")
        match = _LONE.match(first)
    return _Candidate(float(match.group(1)), None, "lone") if match else None


def _labelled_reason(text: str) -> str:
    match = _REASON_LINE.search(text)
    return match.group(1).strip().strip("\"'{}, ") if match else ""


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _show(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)
