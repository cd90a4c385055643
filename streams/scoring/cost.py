"""What a completion cost, from its token counts and a versioned price table.

Prices change and models get renamed, so a cost is only meaningful with the table it came
from: every ``Cost`` carries ``table_version``, the scored event stores it, and
``reprice`` recomputes stored rows with another version instead of trusting old figures.
An unpriced model gets ``usd=None`` with a reason rather than a guess: a zero would read as
"free" in every sum downstream.

Token convention (OpenAI's, which the SDK and gateway follow): ``cached_tokens`` are the part
of ``input_tokens`` served from the provider's cache. They are billed at the cached price and
the rest of the input at the input price, so no token is billed twice.

>>> table = PriceTable.load()
>>> table.cost("gpt-4o-mini", input_tokens=1_000_000, output_tokens=0).usd
0.15
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from undertow.errors import UndertowError
from undertow.streams.scoring.model_names import best_match, normalise

TOKENS_PER_UNIT = 1_000_000  # prices are USD per 1M tokens


class CostError(UndertowError):
    """A price table is missing or malformed, or token counts are impossible."""


class ModelPrice(BaseModel):
    """One model's prices in USD per 1M tokens, and the names that select it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    aliases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


class _TableFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    currency: str = "USD"
    unit: str = "per_1m_tokens"
    models: dict[str, ModelPrice]


@dataclass(frozen=True)
class Cost:
    """A cost estimate. ``usd`` is None when it cannot be priced; ``reason`` then says why."""

    usd: float | None
    table_version: str
    matched_model: str | None
    reason: str | None = None


class PriceTable:
    """Prices by model, under one version. Build with ``load`` or ``from_dict``."""

    def __init__(self, version: str, models: Mapping[str, ModelPrice]) -> None:
        self.version = version
        self.models = dict(models)
        # every name and pattern that selects a model -> the model's entry name
        self._names: dict[str, str] = {}
        for name, price in self.models.items():
            for key in (name, *price.aliases, *price.patterns):
                other = self._names.setdefault(normalise(key), name)
                if other != name:
                    raise CostError(
                        f"price table {version}: {key!r} selects both {other!r} and {name!r}"
                    )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PriceTable:
        """Read a table from a YAML file; None reads the one shipped with Undertow."""
        try:
            if path is None:
                source = "undertow.streams/scoring/prices.yaml"
                text = (resources.files("undertow.streams.scoring") / "prices.yaml").read_text(
                    "utf-8"
                )
            else:
                source = os.fspath(path)
                text = Path(path).read_text("utf-8")
            data = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise CostError(f"cannot read the price table {source}: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> PriceTable:
        """Build a table from the parsed YAML shape (``version``, ``models``)."""
        if not isinstance(data, Mapping):
            raise CostError(f"{source}: expected a mapping with version and models")
        try:
            parsed = _TableFile.model_validate(data)
        except ValidationError as exc:
            raise CostError(f"{source}: not a valid price table: {exc}") from exc
        if parsed.currency != "USD" or parsed.unit != "per_1m_tokens":
            raise CostError(
                f"{source}: prices must be USD per_1m_tokens, got {parsed.currency} {parsed.unit}"
            )
        return cls(parsed.version, parsed.models)

    def lookup(self, model: str) -> str | None:
        """The table entry that prices ``model``, or None when none does."""
        key = best_match(model, self._names)
        return None if key is None else self._names[key]

    def cost(
        self,
        model: str | None,
        input_tokens: int,
        output_tokens: int = 0,
        cached_tokens: int | None = 0,
    ) -> Cost:
        """The USD cost of one call; see the module doc for how cached tokens are billed.

        Negative counts raise CostError. ``cached_tokens`` above ``input_tokens`` cannot be
        billed under the convention (the provider reported them another way), so it gives
        ``usd=None`` with the reason instead of a wrong figure.
        """
        cached = cached_tokens or 0
        for label, n in (("input", input_tokens), ("output", output_tokens), ("cached", cached)):
            if n < 0:
                raise CostError(f"{label}_tokens must be >= 0, got {n}")
        if not model:
            return Cost(None, self.version, None, "no model name")
        entry = self.lookup(model)
        if entry is None:
            return Cost(None, self.version, None, f"model {model!r} is not in table {self.version}")
        if cached > input_tokens:
            return Cost(
                None,
                self.version,
                entry,
                f"cached_tokens {cached} exceeds input_tokens {input_tokens}",
            )
        price = self.models[entry]
        cached_price = price.input if price.cached_input is None else price.cached_input
        usd = (
            math.fsum(
                (
                    (input_tokens - cached) * price.input,
                    cached * cached_price,
                    output_tokens * price.output,
                )
            )
            / TOKENS_PER_UNIT
        )
        return Cost(usd, self.version, entry)


def reprice(rows: Iterable[Mapping[str, Any]], table: PriceTable) -> Iterator[dict[str, Any]]:
    """Stored rows with their cost recomputed from their token counts under ``table``.

    Each row is a mapping with ``model``, ``input_tokens``, ``output_tokens`` and
    ``cached_tokens`` (a ``scores`` row or a ScoredEvent); the copy yielded has ``cost_usd``
    and ``price_table_version`` replaced and everything else kept, ready to insert again
    (with a newer ``scored_at``, which wins in the scores table). A row with neither input
    nor output counts stays unpriced: its tokens were never known.
    """
    for row in rows:
        out = dict(row)
        input_tokens, output_tokens = row.get("input_tokens"), row.get("output_tokens")
        if input_tokens is None and output_tokens is None:
            out["cost_usd"] = None
        else:
            out["cost_usd"] = table.cost(
                row.get("model"),
                input_tokens or 0,
                output_tokens or 0,
                row.get("cached_tokens"),
            ).usd
        out["price_table_version"] = table.version
        yield out
