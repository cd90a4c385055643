"""Toxicity scorers: the offline linear model's behaviour and Detoxify's local-only loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from undertow.streams.scoring.base import ScoringError, create
from undertow.streams.scoring.toxicity import DETOXIFY_CHECKPOINTS

from .scoring_fixtures import TinyDetoxify, build_tiny_detoxify

INSULTS = [
    "you are a fucking idiot",
    "shut up you stupid bitch",
    "what a worthless piece of shit you are",
]
CLEAN = [
    "thank you for your help with the report",
    "what is the capital of France?",
    "the weather is lovely today, let's go for a walk",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyDetoxify:
    return build_tiny_detoxify(tmp_path_factory.mktemp("tiny"))


def test_profanity_scores_clear_insults_above_clean_text() -> None:
    scorer = create("toxicity.profanity")
    insults, clean = scorer.score(INSULTS), scorer.score(CLEAN)
    assert min(insults) > 0.5 > 0.2 > max(clean), (insults, clean)
    assert scorer.version.startswith("alt-profanity-check==")


def test_detoxify_without_local_weights_says_what_to_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ScoringError, match=r"not available offline.*model_path.*checkpoint"):
        create("toxicity.detoxify")


def test_detoxify_reads_its_checkpoint_from_the_torch_hub_cache(
    tiny: TinyDetoxify, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "hub" / "checkpoints" / DETOXIFY_CHECKPOINTS["original"]
    cached.parent.mkdir(parents=True)
    shutil.copy(tiny.checkpoint, cached)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    scorer = create("toxicity.detoxify", model_type="original", config_path=tiny.directory)
    assert scorer.version == f"detoxify:{cached.name}:toxicity"


def test_detoxify_returns_the_toxicity_label(tiny: TinyDetoxify) -> None:
    # The tiny model's "toxic" logit (renamed "toxicity", as Detoxify does) is biased high and
    # every other label low, so the label index decides the score.
    toxicity = create("toxicity.detoxify", model_path=tiny.directory)
    insult = create("toxicity.detoxify", model_path=tiny.directory, label="insult")
    assert min(toxicity.score(CLEAN)) > 0.99
    assert max(insult.score(CLEAN)) < 0.01
    assert toxicity.score(CLEAN) == pytest.approx(
        create("toxicity.detoxify", checkpoint=tiny.checkpoint, config_path=tiny.directory).score(
            CLEAN
        ),
        abs=1e-6,
    )


def test_detoxify_rejects_an_unknown_label(tiny: TinyDetoxify) -> None:
    with pytest.raises(ScoringError, match="no label 'hate'"):
        create("toxicity.detoxify", model_path=tiny.directory, label="hate")


def test_detoxify_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match="nothing is downloaded"):
        create("toxicity.detoxify", model_path=tmp_path / "absent")


def test_detoxify_rejects_a_checkpoint_without_its_config(tiny: TinyDetoxify) -> None:
    # config_path is missing and bert-base-uncased is not in the local Hugging Face cache
    with pytest.raises(ScoringError, match="config_path"):
        create("toxicity.detoxify", checkpoint=tiny.checkpoint)


def test_detoxify_rejects_a_file_that_is_not_a_detoxify_checkpoint(
    tiny: TinyDetoxify, tmp_path: Path
) -> None:
    import torch

    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ScoringError, match="not a Detoxify checkpoint"):
        create("toxicity.detoxify", checkpoint=path, config_path=tiny.directory)
