"""Built-in redaction patterns and the user hook (services/sdk/redaction.py)."""

from __future__ import annotations

import random

import pytest

from undertow.services.sdk.redaction import Redactor, luhn_valid

VALID_CARDS = ["4111111111111111", "5500005555555559", "378282246310005", "6011111111111117"]


def luhn_digit(partial: str) -> str:
    """The check digit that makes ``partial + digit`` pass Luhn."""
    for digit in "0123456789":
        if luhn_valid(partial + digit):
            return digit
    raise AssertionError("no Luhn digit")


@pytest.mark.parametrize("card", VALID_CARDS)
def test_luhn_accepts_known_test_cards(card: str) -> None:
    assert luhn_valid(card)


def test_valid_card_is_redacted_plain_and_grouped() -> None:
    redactor = Redactor()
    assert redactor.redact("pay with 4111111111111111 now") == "pay with [CARD] now"
    assert redactor.redact("card: 4111 1111 1111 1111.") == "card: [CARD]."
    assert redactor.redact("card 5500-0055-5555-5559") == "card [CARD]"


def test_random_non_luhn_16_digit_number_is_kept() -> None:
    rng = random.Random(7)
    redactor = Redactor()
    kept = 0
    for _ in range(50):
        partial = "".join(rng.choice("0123456789") for _ in range(15))
        wrong = str((int(luhn_digit(partial)) + 1 + rng.randrange(9)) % 10)
        number = partial + wrong
        assert not luhn_valid(number)
        text = f"order {number} shipped"
        assert redactor.redact(text) == text
        grouped = " ".join(number[i : i + 4] for i in range(0, 16, 4))
        assert redactor.redact(f"ref {grouped}") == f"ref {grouped}"
        kept += 1
    assert kept == 50


def test_generated_luhn_numbers_are_redacted() -> None:
    rng = random.Random(11)
    redactor = Redactor()
    for _ in range(50):
        partial = "4" + "".join(rng.choice("0123456789") for _ in range(14))
        number = partial + luhn_digit(partial)
        assert redactor.redact(f"x {number} y") == "x [CARD] y"


def test_email_addresses_are_redacted() -> None:
    redactor = Redactor()
    text = "write to ann.lee+support@mail.example.co.uk or bob@example.com."
    assert redactor.redact(text) == "write to [EMAIL] or [EMAIL]."
    assert (
        redactor.redact("no at here, just @handles and a@b") == "no at here, just @handles and a@b"
    )


@pytest.mark.parametrize(
    "phone",
    ["+1 415 555 2671", "+44 20 7946 0958", "(415) 555-2671", "415-555-2671", "+4915112345678"],
)
def test_phone_numbers_are_redacted(phone: str) -> None:
    assert Redactor().redact(f"call {phone} today") == "call [PHONE] today"


@pytest.mark.parametrize("text", ["version 1.2.3", "in 2024-05-06", "id 12345678", "pi 3.14159"])
def test_ordinary_numbers_are_not_phones(text: str) -> None:
    assert Redactor().redact(text) == text


def test_builtins_can_be_chosen_and_hook_runs_last() -> None:
    only_email = Redactor(["email"], hook=lambda s: s.replace("secret", "[S]"))
    assert only_email.redact("a@b.io 4111111111111111 secret") == "[EMAIL] 4111111111111111 [S]"
    none = Redactor([])
    assert not none.active
    assert none.redact("a@b.io") == "a@b.io"


def test_hook_returning_non_str_is_an_error() -> None:
    redactor = Redactor([], hook=lambda s: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError):
        redactor.redact("x")


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown redactions"):
        Redactor(["ssn"])
