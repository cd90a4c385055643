"""The training set: query building, cleaning (exact and near duplicates, flags, counts),
the held-out split, and the validation of a ``fine_tune`` action's parameters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from undertow.services.finetune.dataset import (
    REASONS,
    ActionParameters,
    CleanSpec,
    Example,
    ExampleVectors,
    FineTuneQuery,
    InvalidParameter,
    NotEnoughExamples,
    ScoreFlags,
    SplitSpec,
    StoredVectors,
    build_query,
    clean,
    near_duplicates,
    normalise,
    split,
)
from undertow.services.finetune.job import FineTuneParams


def ex(i: int, prompt: str, completion: str) -> Example:
    return Example(
        prompt=prompt,
        completion=completion,
        event_id=f"c{i}",
        prompt_event_id=f"p{i}",
        messages=(("system", "Be brief."), ("user", prompt)),
    )


def orthogonal(n: int, dim: int = 16) -> npt.NDArray[np.float32]:
    return np.eye(n, dim, dtype=np.float32)


class Embed:
    """Vectors by completion event id; records what it was asked for."""

    def __init__(self, vectors: dict[str, npt.NDArray[np.float32]]) -> None:
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def __call__(self, examples: Sequence[Example]) -> npt.NDArray[np.float32]:
        self.calls.append([e.event_id for e in examples])
        return np.stack([self.vectors[e.event_id] for e in examples])


def distinct(examples: Sequence[Example]) -> Embed:
    basis = orthogonal(len(examples), max(16, len(examples)))
    return Embed({e.event_id: basis[i] for i, e in enumerate(examples)})


# --- cleaning ---------------------------------------------------------------------------------


def test_normalise_folds_case_width_and_whitespace() -> None:
    assert (
        normalise("  \uff28\uff45\uff4c\uff4c\uff4f,\n\tWORLD  ")
        == normalise("hello, world")
        == "hello, world"
    )


def test_exact_duplicates_are_dropped_after_normalising_and_the_first_is_kept() -> None:
    examples = [
        ex(0, "How do I reset my password?", "Open Settings, then Security."),
        ex(1, "how do I  reset my PASSWORD?", "open settings, then security."),
        ex(2, "How do I reset my password?", "Call support."),  # another answer: kept
        ex(3, "How do I reset my password?", "Open Settings, then Security. "),
    ]
    embed = distinct(examples)
    cleaned = clean(examples, embed=embed, flags={})
    assert [e.event_id for e in cleaned.examples] == ["c0", "c2"]
    assert [(d.example.event_id, d.reason, d.kept) for d in cleaned.dropped] == [
        ("c1", "exact_duplicate", examples[0]),
        ("c3", "exact_duplicate", examples[0]),
    ]
    assert embed.calls == [["c0", "c2"]]  # only survivors are embedded, once
    assert cleaned.counts() == {r: (2 if r == "exact_duplicate" else 0) for r in REASONS}


def test_a_different_system_prompt_is_not_a_duplicate() -> None:
    a = ex(0, "Hi", "Hello!")
    b = Example("Hi", "Hello!", "c1", "p1", messages=(("system", "Be formal."), ("user", "Hi")))
    cleaned = clean([a, b], embed=distinct([a, b]), flags={})
    assert len(cleaned.examples) == 2


def test_near_duplicates_by_cosine_keep_the_first_and_compare_with_kept_only() -> None:
    examples = [ex(i, f"question {i}", f"answer {i}") for i in range(4)]
    a = np.array([1.0, 0.0, 0.0], np.float32)
    b = np.array([0.96, 0.28, 0.0], np.float32)  # cos(a, b) = 0.96
    c = np.array([0.85, 0.53, 0.0], np.float32)  # cos(a, c) ~ 0.85, cos(b, c) ~ 0.96
    d = np.array([0.0, 0.0, 2.0], np.float32)  # not unit length: normalised
    embed = Embed({"c0": a, "c1": b, "c2": c, "c3": d})
    cleaned = clean(examples, embed=embed, flags={}, spec=CleanSpec(near_duplicate=0.95))
    assert [e.event_id for e in cleaned.examples] == ["c0", "c2", "c3"]
    (dropped,) = cleaned.dropped
    assert (dropped.example.event_id, dropped.reason, dropped.kept) == (
        "c1",
        "near_duplicate",
        examples[0],
    )
    assert dropped.value == pytest.approx(float(a @ b) / float(np.linalg.norm(b)), abs=1e-5)
    looser = clean(examples, embed=embed, flags={}, spec=CleanSpec(near_duplicate=0.97))
    assert len(looser.examples) == 4


def test_near_duplicates_across_blocks_match_the_pairwise_greedy_rule() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(300, 8))
    vectors = np.vstack([base, base[:200] + 0.01 * rng.normal(size=(200, 8))])  # 200 echoes
    kept, dropped = near_duplicates(vectors, 0.99)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected: list[int] = []
    for i in range(len(unit)):  # the rule, one row at a time
        if not expected or float(np.max(unit[expected] @ unit[i])) <= 0.99:
            expected.append(i)
    assert kept == expected
    assert set(dropped) == set(range(len(vectors))) - set(expected)
    assert all(sim > 0.99 and twin in kept for twin, sim in dropped.values())


def test_toxic_and_injected_examples_are_dropped_on_prompt_or_completion() -> None:
    examples = [ex(i, f"question {i}", f"answer {i}") for i in range(6)]
    flags = {
        "p0": ScoreFlags(toxicity=0.9, injection=0.0),  # toxic prompt
        "c1": ScoreFlags(toxicity=0.51),  # toxic answer
        "p2": ScoreFlags(toxicity=0.1, injection=0.95),  # injected prompt
        "p3": ScoreFlags(toxicity=0.5, injection=0.8),  # at the thresholds: kept
        "c3": ScoreFlags(toxicity=None, injection=None),
        "x9": ScoreFlags(toxicity=1.0),  # another event: ignored
    }
    cleaned = clean(examples, embed=distinct(examples), flags=flags)
    assert [e.event_id for e in cleaned.examples] == ["c3", "c4", "c5"]
    assert [(d.example.event_id, d.reason, d.value) for d in cleaned.dropped] == [
        ("c0", "toxic", 0.9),
        ("c1", "toxic", 0.51),
        ("c2", "injection", 0.95),
    ]
    strict = clean(examples, embed=distinct(examples), flags=flags, spec=CleanSpec(0.95, 0.4, 0.7))
    assert strict.counts()["toxic"] == 3 and strict.counts()["injection"] == 1


def test_a_flagged_copy_does_not_hide_its_clean_duplicate() -> None:
    toxic = ex(0, "Tell me a joke", "Here is one.")
    clean_copy = ex(1, "Tell me a joke", "Here is one.")
    cleaned = clean(
        [toxic, clean_copy], embed=distinct([clean_copy]), flags={"c0": ScoreFlags(0.99)}
    )
    assert cleaned.examples == (clean_copy,)
    assert cleaned.counts()["toxic"] == 1 and cleaned.counts()["exact_duplicate"] == 0


def test_empty_examples_are_dropped_and_nothing_is_embedded_when_none_survive() -> None:
    examples = [ex(0, "question", "   "), Example("", "an answer", "c1")]
    embed = Embed({})
    cleaned = clean(examples, embed=embed, flags={})
    assert cleaned.examples == ()
    assert cleaned.counts()["empty"] == 2
    assert embed.calls == []


def test_counts_add_up_and_dropped_keeps_input_order() -> None:
    examples = [
        ex(0, "a", "x"),
        ex(1, "b", "y"),
        ex(2, "A", "X"),  # exact duplicate of 0
        ex(3, "c", "z"),  # near duplicate of 1 by vector
        ex(4, "d", "w"),  # toxic
    ]
    vectors = orthogonal(5)
    vectors[3] = vectors[1]
    embed = Embed({f"c{i}": vectors[i] for i in range(5)})
    cleaned = clean(examples, embed=embed, flags={"p4": ScoreFlags(toxicity=0.7)})
    counts = cleaned.counts()
    assert sum(counts.values()) + len(cleaned.examples) == len(examples)
    assert [d.reason for d in cleaned.dropped] == ["exact_duplicate", "near_duplicate", "toxic"]


# --- vectors from the table or the model ----------------------------------------------------


def stored(field: str, vectors: dict[str, list[float]]) -> StoredVectors:
    return StoredVectors(field, "mini", {k: np.asarray(v, np.float32) for k, v in vectors.items()})


def test_example_vectors_use_the_table_when_it_covers_every_example() -> None:
    a, b = ex(0, "q0", "a0"), ex(1, "q1", "a1")
    vectors = ExampleVectors(
        prompts=stored("prompt", {"p0": [1, 0], "p1": [0.6, 0.8]}),
        completions=stored("completion", {"c0": [0, 2], "c1": [0, 1]}),
        embed=None,
    )
    matrix = vectors([a, b])
    assert vectors.sources == {"prompt": "table:mini", "completion": "table:mini"}
    assert matrix.shape == (2, 4)
    # the cosine of two examples is the mean of their prompt and answer cosines
    assert float(matrix[0] @ matrix[1]) == pytest.approx((0.6 + 1.0) / 2, abs=1e-6)


def test_example_vectors_compute_a_field_the_table_covers_only_in_part() -> None:
    a = ex(0, "q0", "a0")
    correction = Example("q1", "fixed", "f1", "p1", source="correction")
    texts: list[list[str]] = []

    def embed(batch: Sequence[str]) -> npt.NDArray[Any]:
        texts.append(list(batch))
        return np.ones((len(batch), 3))

    vectors = ExampleVectors(
        prompts=stored("prompt", {"p0": [1, 0], "p1": [0, 1]}),
        completions=stored("completion", {"c0": [1, 0]}),
        embed=embed,
    )
    matrix = vectors([a, correction])
    assert vectors.sources == {"prompt": "table:mini", "completion": "computed"}
    assert texts == [["a0", "fixed"]]  # the whole field, in one space
    assert matrix.shape == (2, 5)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0)


def test_example_vectors_without_a_model_say_what_is_missing() -> None:
    vectors = ExampleVectors(
        prompts=stored("prompt", {}), completions=stored("completion", {}), embed=None
    )
    with pytest.raises(Exception, match="expected stored prompt embeddings for all 1 examples"):
        vectors([ex(0, "q", "a")])


# --- the query --------------------------------------------------------------------------------


def test_the_default_query_binds_every_value() -> None:
    query = FineTuneQuery(
        app="o'brien-bot",
        model="gpt-x",
        since=datetime(2025, 3, 1, tzinfo=UTC),
        until=datetime(2025, 4, 1, tzinfo=UTC),
        min_feedback=0.75,
        limit=123,
    )
    sql, parameters = build_query(query)
    assert parameters == {
        "app": "o'brien-bot",
        "model": "gpt-x",
        "since": query.since,
        "until": query.until,
        "min_feedback": 0.75,
        "correction_labels": ["correction"],
        "limit": 123,
    }
    for name, kind in [
        ("app", "String"),
        ("model", "String"),
        ("since", "DateTime64(6, 'UTC')"),
        ("until", "DateTime64(6, 'UTC')"),
        ("min_feedback", "Float64"),
        ("limit", "UInt32"),
    ]:
        assert f"{{{name}:{kind}}}" in sql
    assert "o'brien" not in sql and "gpt-x" not in sql and "0.75" not in sql
    assert "prompt_name" not in parameters and "{prompt_name:" not in sql
    assert "UNION ALL" not in sql  # corrections only when asked for


def test_corrections_and_feedback_sources_add_their_parts() -> None:
    query = FineTuneQuery(
        app="bot",
        prompt_name="faq",
        include_corrections=True,
        correction_labels=("correction", "fix"),
        feedback_sources=("user", "annotator"),
    )
    sql, parameters = build_query(query)
    assert "UNION ALL" in sql and "'correction' AS source" in sql
    assert parameters["correction_labels"] == ["correction", "fix"]
    assert parameters["feedback_sources"] == ["user", "annotator"]
    assert "{feedback_sources:Array(String)}" in sql and "{prompt_name:String}" in sql


def test_a_custom_query_gets_only_the_parameters_it_names() -> None:
    custom = (
        "SELECT p AS prompt, c AS completion FROM t WHERE app = {app:String} LIMIT {limit:UInt32}"
    )
    sql, parameters = build_query(FineTuneQuery(app="bot", sql=custom, limit=7))
    assert sql == custom and parameters == {"app": "bot", "limit": 7}
    plain = "SELECT 'a' AS prompt, 'b' AS completion WHERE 'x' LIKE '%y%'"
    assert build_query(FineTuneQuery(app="bot", sql=plain)) == (plain, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"app": " "}, "expected an app name"),
        ({"limit": 0}, "'limit': expected at least 1"),
        ({"since": datetime(2025, 1, 2, tzinfo=UTC), "until": datetime(2025, 1, 1, tzinfo=UTC)},
         "expected since < until"),
        ({"since": datetime(2025, 1, 2)}, "expected a time with a zone"),
        ({"correction_labels": ()}, "expected at least one label"),
        ({"sql": "  "}, "expected a query"),
    ],
)  # fmt: skip
def test_a_query_refuses_what_it_cannot_use(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        FineTuneQuery(**{"app": "bot", **fields})


# --- split -------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_keeps_order() -> None:
    examples = [ex(i, f"q{i}", f"a{i}") for i in range(57)]
    train, held = split(examples, SplitSpec(fraction=0.1, minimum=3, seed=1))
    assert len(held) == 6 and len(train) == 51  # ceil(5.7)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(examples)
    assert list(held) == sorted(held, key=examples.index)
    assert split(examples, SplitSpec(0.1, 3, 1)) == (train, held)
    assert split(examples, SplitSpec(0.1, 3, 2))[1] != held
    assert len(split(examples, SplitSpec(0.01, 10, 0))[1]) == 10  # the minimum wins


def test_split_refuses_to_leave_nothing_to_train() -> None:
    with pytest.raises(NotEnoughExamples, match="expected more than 10 examples"):
        split([ex(i, "q", "a") for i in range(10)], SplitSpec(minimum=10))


# --- action parameters -----------------------------------------------------------------------


def test_from_action_converts_every_kind_of_value() -> None:
    params = FineTuneParams.from_action(
        {
            "app": "support-bot",
            "since": "2025-03-01T00:00:00Z",
            "until": "2025-03-08 00:00",
            "include_corrections": "yes",
            "correction_labels": "correction, fix",
            "near_duplicate": "0.9",
            "held_out_fraction": "0.2",
            "min_held_out": "4",
            "rank": "4",
            "target_modules": "q_proj,v_proj,o_proj",
            "learning_rate": "1e-3",
            "max_seconds": "120",
            "min_improvement": "0",
        }
    )
    assert params.query.app == "support-bot"
    assert params.query.since == datetime(2025, 3, 1, tzinfo=UTC)
    assert params.query.until == datetime(2025, 3, 8, tzinfo=UTC)
    assert params.query.include_corrections
    assert params.query.correction_labels == ("correction", "fix")
    assert params.clean.near_duplicate == 0.9 and params.clean.max_toxicity == 0.5
    assert (params.split.fraction, params.split.minimum) == (0.2, 4)
    assert params.lora.rank == 4 and params.lora.target_modules == ("q_proj", "v_proj", "o_proj")
    assert params.lora.learning_rate == 1e-3 and params.lora.max_seconds == 120.0
    assert params.min_improvement == 0.0 and params.base_model is None


def test_from_action_takes_the_app_from_the_worker_when_parameters_name_none() -> None:
    assert FineTuneParams.from_action({}, app="bot").query.app == "bot"
    assert FineTuneParams.from_action({"app": "own"}, app="bot").query.app == "own"
    with pytest.raises(InvalidParameter, match="'app': expected the app to train for"):
        FineTuneParams.from_action({})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_step": "10"}, r"unknown fine_tune parameters \['max_step'\]; expected some of"),
        ({"rank": "eight"}, "parameter 'rank': expected an integer"),
        ({"rank": "0"}, "parameter 'rank': expected an integer from 1"),
        ({"near_duplicate": "1.5"}, "parameter 'near_duplicate': expected a number from 0 to 1"),
        ({"learning_rate": "nan"}, "parameter 'learning_rate': expected"),
        ({"include_corrections": "maybe"}, "expected true or false, got 'maybe'"),
        ({"since": "yesterday"}, "expected an ISO 8601 time"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "expected since < until"),
        ({"target_modules": "q_proj,,v_proj"}, "expected comma-separated names"),
        ({"gguf_file": "model.gguf"}, "'gguf_file' needs 'base_model'"),
        ({"held_out_fraction": "1"}, "'held_out_fraction': expected between 0 and 1"),
        ({"max_length": "8"}, "'max_length': expected an integer >= 16"),
    ],
)
def test_from_action_says_what_was_expected(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        FineTuneParams.from_action({"app": "bot", **parameters})


def test_action_parameters_treat_blank_as_absent() -> None:
    p = ActionParameters({"model": "  ", "limit": ""})
    assert p.text("model") is None and p.integer("limit", 5) == 5
    assert p.unread() == [] and p.known() == ["limit", "model"]
