"""Cost from token counts and a versioned price table; re-pricing stored rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from undertow.streams.scoring.cost import Cost, CostError, PriceTable, reprice

SHIPPED = PriceTable.load()


def small_table(version: str = "v1", **overrides: Any) -> PriceTable:
    models: dict[str, Any] = {
        "m": {"input": 2.0, "output": 8.0, "cached_input": 0.5, "patterns": ["m-20??-??-??"]},
        "nocache": {"input": 1.0, "output": 3.0},
        "m-2024-01-01": {"input": 4.0, "output": 16.0},
    }
    models.update(overrides)
    return PriceTable.from_dict({"version": version, "models": models})


def test_shipped_table() -> None:
    assert SHIPPED.version == "2026-11-01"
    for name in ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "smollm2-135m-instruct"):
        assert name in SHIPPED.models
    assert SHIPPED.cost("gpt-4o-mini", 1_000_000, 0) == Cost(0.15, "2026-11-01", "gpt-4o-mini")
    assert SHIPPED.cost("gpt-4o", 0, 1_000_000).usd == pytest.approx(10.0)


def test_local_model_costs_nothing_under_any_spelling() -> None:
    for name in (
        "SmolLM2-135M-Instruct",
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ):
        c = SHIPPED.cost(name, 1000, 1000)
        assert (c.usd, c.matched_model) == (0.0, "smollm2-135m-instruct")


def test_snapshots_and_aliases_resolve() -> None:
    assert SHIPPED.lookup("gpt-4o-2024-08-06") == "gpt-4o"
    assert SHIPPED.lookup("gpt-4o-mini-2024-07-18") == "gpt-4o-mini"  # not gpt-4o
    assert SHIPPED.lookup("gpt-4o-2024-05-13") == "gpt-4o-2024-05-13"  # exact beats pattern
    assert SHIPPED.lookup("claude-sonnet-4-20250514") == "claude-sonnet-4"
    assert SHIPPED.lookup("openai/GPT-4.1-mini") == "gpt-4.1-mini"
    assert SHIPPED.lookup("gpt-35-turbo") == "gpt-3.5-turbo"
    assert SHIPPED.lookup("gpt-4o-audio-preview") is None  # no guessing from a prefix


def test_cached_tokens_are_billed_once_at_the_cached_price() -> None:
    t = small_table()
    # 1M input of which 400k cached: 600k * 2.0 + 400k * 0.5 = 1.2 + 0.2; output 0.5M * 8 = 4
    c = t.cost("m", input_tokens=1_000_000, output_tokens=500_000, cached_tokens=400_000)
    assert c.usd == pytest.approx(1.2 + 0.2 + 4.0)
    assert (c.table_version, c.matched_model, c.reason) == ("v1", "m", None)
    # no cached price: cached tokens cost the input price, so caching changes nothing
    assert t.cost("nocache", 1_000_000, 0, 400_000).usd == pytest.approx(1.0)
    assert t.cost("m", 1_000_000, 0, None).usd == pytest.approx(2.0)


def test_exact_figures_for_a_small_call() -> None:
    c = SHIPPED.cost("gpt-4o", input_tokens=1000, output_tokens=500, cached_tokens=200)
    assert c.usd == pytest.approx((800 * 2.50 + 200 * 1.25 + 500 * 10.00) / 1e6)
    assert c.usd == pytest.approx(0.00725)


def test_unknown_or_missing_model_has_no_cost_and_says_why() -> None:
    c = SHIPPED.cost("my-private-model", 1000, 10)
    assert c.usd is None and c.matched_model is None
    assert c.reason is not None and "my-private-model" in c.reason
    assert SHIPPED.cost(None, 10, 10).reason == "no model name"
    assert SHIPPED.cost("", 10, 10).usd is None


def test_impossible_counts() -> None:
    t = small_table()
    with pytest.raises(CostError, match="input_tokens must be >= 0"):
        t.cost("m", -1, 0)
    with pytest.raises(CostError, match="output_tokens"):
        t.cost("m", 1, -5)
    c = t.cost("m", 10, 0, cached_tokens=11)
    assert c.usd is None and c.matched_model == "m" and "exceeds" in (c.reason or "")


def test_pattern_specificity_not_file_order() -> None:
    t = PriceTable.from_dict(
        {
            "version": "v",
            "models": {
                "broad": {"input": 1, "output": 1, "patterns": ["x-*"]},
                "narrow": {"input": 2, "output": 2, "patterns": ["x-mini-*"]},
            },
        }
    )
    assert t.lookup("x-mini-2") == "narrow"
    assert t.lookup("x-large") == "broad"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping"),
        ({"models": {}}, "version"),
        ({"version": "v", "models": {"m": {"input": 1}}}, "output"),
        ({"version": "v", "models": {"m": {"input": -1, "output": 1}}}, "greater than or equal"),
        ({"version": "v", "models": {"m": {"input": 1, "output": 1, "typo": 2}}}, "typo"),
        ({"version": "v", "currency": "EUR", "models": {}}, "USD"),
        (
            {
                "version": "v",
                "models": {
                    "a": {"input": 1, "output": 1, "aliases": ["z"]},
                    "b": {"input": 1, "output": 1, "aliases": ["Z"]},
                },
            },
            "selects both",
        ),
    ],
)
def test_malformed_tables_are_refused(data: Any, message: str) -> None:
    with pytest.raises(CostError, match=message):
        PriceTable.from_dict(data)


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        yaml.safe_dump({"version": "2020-01-01", "models": {"m": {"input": 1, "output": 2}}})
    )
    t = PriceTable.load(path)
    assert t.version == "2020-01-01"
    assert t.cost("m", 1_000_000, 1_000_000).usd == pytest.approx(3.0)
    with pytest.raises(CostError, match="cannot read"):
        PriceTable.load(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("version: [unclosed")
    with pytest.raises(CostError, match="cannot read"):
        PriceTable.load(tmp_path / "broken.yaml")


def test_reprice_history_with_another_version() -> None:
    old = small_table("v1")
    new = small_table(
        "v2", m={"input": 1.0, "output": 4.0, "cached_input": 0.25, "patterns": ["m-20??-??-??"]}
    )
    stored: list[dict[str, Any]] = [
        {
            "event_id": "a",
            "model": "m",
            "input_tokens": 1_000_000,
            "output_tokens": 0,
            "cached_tokens": 0,
            "cost_usd": None,
            "price_table_version": "",
        },
        {
            "event_id": "b",
            "model": "m-2025-05-05",
            "input_tokens": 0,
            "output_tokens": 1_000_000,
            "cached_tokens": None,
        },
        {"event_id": "c", "model": "unknown", "input_tokens": 5, "output_tokens": 5},
        {"event_id": "d", "model": "m", "input_tokens": None, "output_tokens": None},
    ]
    first = list(reprice(stored, old))
    assert [r["cost_usd"] for r in first] == pytest.approx([2.0, 8.0, None, None])
    second = list(reprice(first, new))
    assert [r["cost_usd"] for r in second] == pytest.approx([1.0, 4.0, None, None])
    assert {r["price_table_version"] for r in second} == {"v2"}
    # everything else is kept, and the input rows are not modified
    assert [r["event_id"] for r in second] == ["a", "b", "c", "d"]
    assert stored[0]["cost_usd"] is None and first[0]["price_table_version"] == "v1"
