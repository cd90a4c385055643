"""Realistic chat traffic for drift tests, benchmarks and demos: the chatterbot corpus.

The registry package ``chatterbot-corpus`` (1.3.3) ships ~4,400 English utterances, questions
and answers, in 21 topic files (``tech_support``, ``trivia``, ``sports``, ...). A baseline made
of some topics and traffic that moves to others is a topic shift with real sentences, which
synthetic vectors cannot imitate (real embeddings cluster, overlap and repeat).

>>> texts = load_topics(["greetings"])  # doctest: +SKIP
>>> texts[0]  # doctest: +SKIP
Utterance(topic='greetings', text='Hello')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from typing import Any

from undertow.streams.drift.base import DriftError

# A tech-support assistant's usual traffic, and the general-knowledge talk it was not built for.
ASSISTANT_TOPICS: tuple[str, ...] = (
    "tech_support",
    "coding",
    "computers",
    "ai",
    "botprofile",
    "greetings",
    "conversations",
    "emotion",
    "psychology",
)
GENERAL_TOPICS: tuple[str, ...] = (
    "trivia",
    "history",
    "sports",
    "food",
    "movies",
    "literature",
    "science",
    "politics",
    "money",
    "humor",
    "gossip",
    "health",
)


@dataclass(frozen=True)
class Utterance:
    """One line of a corpus conversation and the topic file it came from."""

    topic: str
    text: str


def _english() -> Any:
    try:
        import chatterbot_corpus
    except ImportError as exc:
        raise DriftError(
            "the drift corpus needs the package chatterbot-corpus (pip install "
            "'chatterbot-corpus==1.3.3')"
        ) from exc
    return resources.files(chatterbot_corpus) / "data" / "english"


def available_topics() -> list[str]:
    """The English topic names, e.g. ``tech_support``."""
    return sorted(
        p.name.removesuffix(".yml") for p in _english().iterdir() if p.name.endswith(".yml")
    )


def load_topics(topics: Iterable[str], exclude: Iterable[str] = ()) -> list[Utterance]:
    """Every distinct utterance of ``topics``, in file order: a text repeated counts once (with
    the first topic asked for that has it), texts in ``exclude`` are left out (to keep a
    shift's texts apart from the baseline's), and so are lines without a letter or digit (the
    corpus has a few, such as ``","``)."""
    seen: set[str] = set(exclude)
    out: list[Utterance] = []
    for topic, conversation in _conversations(topics):
        for text in conversation:
            if text not in seen and any(c.isalnum() for c in text):
                seen.add(text)
                out.append(Utterance(topic, text))
    return out


def _conversations(topics: Iterable[str]) -> Iterable[tuple[str, list[str]]]:
    """``(topic, lines)`` of every conversation of ``topics``, in file order."""
    import yaml

    root = _english()
    for topic in topics:
        path = root / f"{topic}.yml"
        if not path.is_file():
            raise DriftError(
                f"expected a chatterbot topic, one of {available_topics()}; got {topic!r}"
            )
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            yield topic, [str(line).strip() for line in conversation]


def load_pairs(topics: Iterable[str]) -> list[tuple[str, str]]:
    """(question, answer) pairs of ``topics``: each line of a conversation and the line that
    follows it, distinct by question, in file order (a demo's prompts and completions)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for _, lines in _conversations(topics):
        for question, answer in pairwise(lines):
            if question not in seen and any(c.isalnum() for c in question + answer):
                seen.add(question)
                out.append((question, answer))
    return out


__all__ = [
    "ASSISTANT_TOPICS",
    "GENERAL_TOPICS",
    "Utterance",
    "available_topics",
    "load_pairs",
    "load_topics",
]
