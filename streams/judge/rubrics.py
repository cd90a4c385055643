"""Versioned rubric prompts of the LLM judge, read from YAML.

A rubric is a system and a user template (``string.Template``: ``$question``, ``$answer``,
``$documents``), an integer scale and the inputs it needs. Its :attr:`Rubric.rubric_version`
is the declared ``version`` plus a hash of everything that shapes the judge's answer (scale,
inputs, both templates), so editing the text without bumping ``version`` still yields a new
version, and scores of different texts never mix under one name and version.

>>> rubrics = load_rubrics()
>>> [r.name for r in rubrics.applicable(JudgeInputs("Why?", "Because.", ()))]
['relevance', 'coherence']
>>> rubrics.get("relevance").scale
(1, 5)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from undertow.streams.config_file import read_yaml
from undertow.streams.judge import JudgeError

DEFAULT_RUBRICS = "rubrics.yaml"
Input = Literal["question", "answer", "documents"]
INPUTS: frozenset[str] = frozenset({"question", "answer", "documents"})


class RubricError(JudgeError):
    """A rubric file that cannot be read or a rubric that is not valid."""


@dataclass(frozen=True)
class JudgeInputs:
    """What a rubric can show the judge: the user's question, the model's answer and the
    texts of the retrieved documents (empty when the trace retrieved nothing)."""

    question: str
    answer: str
    documents: tuple[str, ...] = ()

    def has(self, name: str) -> bool:
        """True when the input ``name`` is present (non-empty)."""
        if name == "documents":
            return any(d.strip() for d in self.documents)
        return bool(getattr(self, name).strip())

    def values(self) -> dict[str, str]:
        """The template values; documents are numbered ``[1] ...`` one per paragraph."""
        documents = "\n\n".join(f"[{i}] {d}" for i, d in enumerate(self.documents, 1))
        return {"question": self.question, "answer": self.answer, "documents": documents}


class Rubric(BaseModel):
    """One judging criterion: templates, scale and the inputs it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    version: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._]+$")
    scale: tuple[int, int]
    needs: tuple[Input, ...] = Field(min_length=1)
    system: str = Field(min_length=1)
    user: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        low, high = self.scale
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"scale: expected [low, high] with 0 <= low < high <= 100, got [{low}, {high}]"
            )
        if len(set(self.needs)) != len(self.needs):
            raise ValueError(f"needs: expected distinct inputs, got {list(self.needs)}")
        used: set[str] = set()
        for field in ("system", "user"):
            template = Template(getattr(self, field))
            if not template.is_valid():
                raise ValueError(f"{field}: not a valid template (a stray '$'? write '$$')")
            used.update(template.get_identifiers())
        unknown = used - INPUTS
        if unknown:
            raise ValueError(
                f"templates use {sorted(unknown)}; expected only ${', $'.join(sorted(INPUTS))}"
            )
        if used != set(self.needs):
            raise ValueError(
                f"needs {sorted(self.needs)} but the templates use {sorted(used)}: "
                "list exactly the inputs the templates show"
            )
        return self

    @property
    def content_hash(self) -> str:
        """12 hex digits of SHA-256 over the scale, inputs and templates."""
        text = json.dumps(
            {
                "scale": list(self.scale),
                "needs": list(self.needs),
                "system": self.system,
                "user": self.user,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def rubric_version(self) -> str:
        """``<version>-<content hash>``, recorded with every score."""
        return f"{self.version}-{self.content_hash}"

    def applies(self, inputs: JudgeInputs) -> bool:
        """True when every input this rubric needs is present."""
        return all(inputs.has(name) for name in self.needs)

    def messages(self, inputs: JudgeInputs) -> list[dict[str, str]]:
        """The chat messages that ask the judge for this rubric's score."""
        values = inputs.values()
        return [
            {"role": "system", "content": Template(self.system).substitute(values).strip()},
            {"role": "user", "content": Template(self.user).substitute(values).strip()},
        ]


@dataclass(frozen=True)
class RubricSet:
    """The rubrics a judge worker runs, by unique name, in file order."""

    rubrics: tuple[Rubric, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        names = [r.name for r in self.rubrics]
        if len(set(names)) != len(names):
            raise RubricError(f"{self.source}: rubric names must be unique, got {names}")
        if not names:
            raise RubricError(f"{self.source}: expected at least one rubric, got none")

    def __iter__(self) -> Iterator[Rubric]:
        return iter(self.rubrics)

    def __len__(self) -> int:
        return len(self.rubrics)

    def get(self, name: str) -> Rubric:
        for rubric in self.rubrics:
            if rubric.name == name:
                return rubric
        raise RubricError(f"no rubric {name!r}; expected one of {[r.name for r in self.rubrics]}")

    def only(self, names: Sequence[str]) -> RubricSet:
        """The rubrics named, in this set's order (an unknown name is an error)."""
        wanted = {self.get(n).name for n in names}
        return RubricSet(tuple(r for r in self.rubrics if r.name in wanted), self.source)

    def applicable(self, inputs: JudgeInputs) -> list[Rubric]:
        """The rubrics whose inputs are all present (groundedness only with documents)."""
        return [r for r in self.rubrics if r.applies(inputs)]


def parse_rubrics(data: Any, source: str = "<memory>") -> RubricSet:
    """Validate a parsed rubric document: ``{"rubrics": [{name, version, scale, ...}, ...]}``."""
    if not isinstance(data, dict) or not isinstance(data.get("rubrics"), list):
        raise RubricError(f"{source}: expected a mapping with a 'rubrics' list, got {data!r:.80}")
    rubrics: list[Rubric] = []
    for i, item in enumerate(data["rubrics"]):
        name = item.get("name", f"#{i}") if isinstance(item, dict) else f"#{i}"
        try:
            rubrics.append(Rubric.model_validate(item))
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "rubric"
            raise RubricError(f"{source}: rubric {name}: {where}: {first['msg']}") from None
    return RubricSet(tuple(rubrics), source)


def load_rubrics(path: str | os.PathLike[str] | None = None) -> RubricSet:
    """Read a rubric file; None reads the rubrics shipped with Undertow (``rubrics.yaml``)."""
    data, source = read_yaml(
        path,
        package="undertow.streams.judge",
        name=DEFAULT_RUBRICS,
        what="rubric",
        error=RubricError,
    )
    return parse_rubrics(data, source)
