"""Redaction of personal data in texts before anything leaves the process.

Three built-in patterns (e-mail addresses, phone numbers, payment card numbers) and an optional
user hook run on the SDK's background thread, over every text field of an event (messages,
queries, documents, completions, feedback comments, attribute values), before it is encoded,
spooled or sent. A card number is replaced only when its digits pass the Luhn check, so order
numbers and ids of the same length stay readable.

>>> Redactor().redact("mail ann@example.com, card 4111 1111 1111 1111")
'mail [EMAIL], card [CARD]'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"
CARD_TOKEN = "[CARD]"

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, optionally grouped by single spaces or dashes; never part of a longer run.
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d])")
# International (+CC ...) or North American (NXX) NXX-XXXX forms; bare digit runs are not
# phones (too many ids look like them). Digit counts are checked in code: 7 to 15 (E.164).
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}[ .-]\d{3}[ .-]\d{4}"
    r")(?![\w])"
)


# Seven or more digits, spaces, dots, dashes or parentheses between two digits: what every
# card and phone number contains. Texts without one skip the slower patterns.
_NUMBER_RUN = re.compile(r"\d[\d ().-]{5,}\d")


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (only 0-9) passes the Luhn checksum of payment card numbers."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return CARD_TOKEN if luhn_valid(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    count = sum(ch.isdigit() for ch in match.group(0))
    return PHONE_TOKEN if 7 <= count <= 15 else match.group(0)


def redact_emails(text: str) -> str:
    return _EMAIL.sub(EMAIL_TOKEN, text) if "@" in text else text


def redact_cards(text: str) -> str:
    return _CARD.sub(_card, text) if _NUMBER_RUN.search(text) else text


def redact_phones(text: str) -> str:
    return _PHONE.sub(_phone, text) if _NUMBER_RUN.search(text) else text


BUILTINS: dict[str, Callable[[str], str]] = {
    "email": redact_emails,
    # Cards before phones: a grouped card number must not be half-taken as a phone.
    "card": redact_cards,
    "phone": redact_phones,
}


class Redactor:
    """Applies the chosen built-in patterns, then the user's hook, to one text at a time.

    The order is fixed (e-mail, card, phone, hook) whatever order ``builtins`` names them in.
    """

    def __init__(
        self,
        builtins: Iterable[str] = ("email", "phone", "card"),
        hook: Callable[[str], str] | None = None,
    ) -> None:
        chosen = set(builtins)
        unknown = chosen - set(BUILTINS)
        if unknown:
            raise ValueError(f"unknown redactions {sorted(unknown)}; expected {sorted(BUILTINS)}")
        self._steps: list[Callable[[str], str]] = [
            fn for name, fn in BUILTINS.items() if name in chosen
        ]
        if hook is not None:
            self._steps.append(hook)

    @property
    def active(self) -> bool:
        return bool(self._steps)

    def redact(self, text: str) -> str:
        """``text`` with every match replaced; a hook returning a non-str raises TypeError."""
        for step in self._steps:
            text = step(text)
            if not isinstance(text, str):
                raise TypeError(f"redaction hook must return str, got {type(text).__name__}")
        return text
