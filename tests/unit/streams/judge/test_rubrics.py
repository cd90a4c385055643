"""Rubrics (streams/judge/rubrics.py and the shipped rubrics.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from undertow.streams.judge.rubrics import JudgeInputs, RubricError, load_rubrics, parse_rubrics

WITH_DOCS = JudgeInputs("Capital of France?", "Paris.", ("Paris is the capital of France.",))
WITHOUT_DOCS = JudgeInputs("Capital of France?", "Paris.", ())


def _rubric(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "helpful",
        "version": "1",
        "scale": [1, 5],
        "needs": ["question", "answer"],
        "system": 'Rate helpfulness 1-5. Reply {"score": n}.',
        "user": "Q: $question\nA: $answer",
    }
    return {**base, **overrides}


def test_shipped_rubrics_load_with_versions_and_scales() -> None:
    rubrics = load_rubrics()
    assert [r.name for r in rubrics] == ["relevance", "coherence", "groundedness"]
    for rubric in rubrics:
        assert rubric.scale == (1, 5)
        assert rubric.rubric_version == f"{rubric.version}-{rubric.content_hash}"
        assert len(rubric.content_hash) == 12
    assert rubrics.get("groundedness").needs == ("question", "answer", "documents")


def test_groundedness_applies_only_with_documents() -> None:
    rubrics = load_rubrics()
    assert [r.name for r in rubrics.applicable(WITH_DOCS)] == [
        "relevance",
        "coherence",
        "groundedness",
    ]
    assert [r.name for r in rubrics.applicable(WITHOUT_DOCS)] == ["relevance", "coherence"]
    blank_docs = JudgeInputs("q", "a", ("  ",))
    assert not rubrics.get("groundedness").applies(blank_docs)


def test_messages_fill_the_templates() -> None:
    messages = load_rubrics().get("groundedness").messages(WITH_DOCS)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "[1] Paris is the capital of France." in user
    assert "Capital of France?" in user and "Paris." in user
    assert "$" not in user
    assert '{"score"' in messages[0]["content"]  # JSON braces in a template stay literal


def test_a_text_edit_changes_the_version_without_a_bump() -> None:
    before = parse_rubrics({"rubrics": [_rubric()]}).get("helpful")
    edited = parse_rubrics({"rubrics": [_rubric(user="Question: $question\nA: $answer")]})
    rescaled = parse_rubrics({"rubrics": [_rubric(scale=[0, 10])]})
    same = parse_rubrics({"rubrics": [_rubric()]}).get("helpful")
    assert same.rubric_version == before.rubric_version
    assert edited.get("helpful").version == before.version == "1"
    assert edited.get("helpful").rubric_version != before.rubric_version
    assert rescaled.get("helpful").rubric_version != before.rubric_version


def test_a_user_file_replaces_the_shipped_rubrics(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rubrics": [_rubric(), _rubric(name="brief", needs=["answer"], user="A: $answer")]}
        )
    )
    rubrics = load_rubrics(path)
    assert [r.name for r in rubrics] == ["helpful", "brief"]
    assert [r.name for r in rubrics.only(["brief"])] == ["brief"]
    with pytest.raises(RubricError, match="no rubric 'relevance'"):
        rubrics.only(["relevance"])


@pytest.mark.parametrize(
    ("rubric", "message"),
    [
        (_rubric(scale=[5, 1]), "scale"),
        (_rubric(scale=[1]), "scale"),
        (_rubric(name="Bad Name"), "name"),
        (_rubric(user="Q: $question A: $answer D: $docs"), "templates use \\['docs'\\]"),
        (_rubric(needs=["question", "answer", "documents"]), "needs"),
        (_rubric(needs=["answer"]), "needs"),
        (_rubric(user="costs $ 5 $question $answer"), "not a valid template"),
        (_rubric(extra="x"), "extra"),
        (_rubric(version=""), "version"),
    ],
)
def test_invalid_rubrics_are_refused_with_the_field(rubric: dict[str, Any], message: str) -> None:
    with pytest.raises(RubricError, match=message):
        parse_rubrics({"rubrics": [rubric]}, source="test.yaml")


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match="cannot read"):
        load_rubrics(tmp_path / "missing.yaml")
    with pytest.raises(RubricError, match="'rubrics' list"):
        parse_rubrics({"rules": []})
    with pytest.raises(RubricError, match="unique"):
        parse_rubrics({"rubrics": [_rubric(), _rubric()]})
    with pytest.raises(RubricError, match="at least one"):
        parse_rubrics({"rubrics": []})
