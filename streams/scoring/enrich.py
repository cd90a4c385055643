"""The enrich processor's core: one micro-batch of decoded events in, each with its scores out.

For a batch, :class:`Enricher` gathers every text worth a model call, embeds them in **one**
call (identical texts once), scores toxicity in one call, and derives the rest from those
vectors and counts:

=============  ==============================================================================
prompt         embedding of the turn's new input (``prompt``), toxicity, injection, and its
               own token count (kept for a completion of the trace that reports no usage)
retrieval      embedding of the query (``query``) and of up to ``max_documents`` documents;
               query-to-document similarity, empty retrievals, the store's latency, and the
               injection score of the documents (indirect injection rides on retrieved text)
completion     embedding (``completion``), toxicity, groundedness against the trace's latest
               retrieved documents, tokens (the response's usage, else counted offline) and
               cost from the versioned price table
feedback       its rating as ``feedback`` (people) or ``judge_<rubric>`` (LLM judge)
=============  ==============================================================================

The injection classifier is a linear probe over the same MiniLM vectors, so with the default
models the batch costs one embedding pass plus a profanity pass; nothing else runs a model.

The prompt text scored is the *turn's new input*: the messages after the last assistant
message, without system messages (a chat resends its history each turn; scoring it again
would repeat old verdicts, and system prompts are the operator's own). Tool messages count:
injected instructions often arrive through tool output.

Groundedness and counted input tokens need the trace's earlier events. Within a batch the
enricher joins them itself (offset order is production order, one trace lives in one
partition); across batches it asks ``contexts(trace_id)``, which the worker answers from its
Faust table of open traces (:mod:`undertow.streams.state.contexts`).

The enricher is a plain blocking callable (the ingest processor runs it on a thread) and
knows nothing of Kafka, Faust or ClickHouse.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.schemas.events import event_body, event_type
from undertow.streams.records import SinkItem
from undertow.streams.scoring.base import Embedder, Scorer
from undertow.streams.scoring.cost import PriceTable
from undertow.streams.scoring.retrieval import groundedness_batch, retrieval_quality_batch
from undertow.streams.scoring.scored import Scored, Vector
from undertow.streams.scoring.tokens import TokenCounter

DEFAULT_MAX_DOCUMENTS = 8
# Characters of one text sent to a model. MiniLM reads 256 word pieces (~1,000 characters of
# English); cutting far beyond that only costs tokenizer time on huge inputs.
MAX_TEXT_CHARS = 4_000


@dataclass(frozen=True)
class TraceContext:
    """What scoring a later event of a trace needs from its earlier events.

    ``prompt_tokens``: the latest prompt's counted tokens; ``documents``: the latest
    retrieval's document vectors (rows of unit length), stored as float16 (about 0.1% error in
    a cosine, far below what the signal can tell apart, and a quarter of the float64 size).
    """

    prompt_tokens: int | None = None
    documents: Vector | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped, for the Faust table's changelog."""
        docs = None
        if self.documents is not None and len(self.documents):
            half = np.ascontiguousarray(self.documents, dtype="<f2")
            docs = {
                "rows": int(half.shape[0]),
                "dim": int(half.shape[1]),
                "f16": base64.b64encode(half.tobytes()).decode("ascii"),
            }
        return {"prompt_tokens": self.prompt_tokens, "documents": docs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TraceContext:
        if not data:
            return cls()
        docs = data.get("documents")
        vectors = None
        if docs:
            raw = base64.b64decode(docs["f16"])
            half = np.frombuffer(raw, dtype="<f2").reshape(int(docs["rows"]), int(docs["dim"]))
            vectors = half.astype(np.float32)
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        tokens = data.get("prompt_tokens")
        return cls(prompt_tokens=None if tokens is None else int(tokens), documents=vectors)

    def updated(self, scored: Scored) -> TraceContext:
        """This context after an event of the trace was scored."""
        out = self
        if scored.prompt_tokens is not None:
            out = TraceContext(scored.prompt_tokens, out.documents)
        if scored.context_vectors is not None:
            out = TraceContext(out.prompt_tokens, scored.context_vectors)
        return out


ContextLookup = Callable[[str], TraceContext | None]


def no_context(trace_id: str) -> TraceContext | None:
    """The lookup of an enricher without trace state: every event stands alone."""
    return None


def feedback_scores(body: Mapping[str, Any]) -> dict[str, float]:
    """A feedback event's rating as a score rules can measure: ``feedback`` for people's
    ratings, ``judge_<label>`` for an LLM judge's (label = rubric), e.g. ``judge_relevance``.

    >>> feedback_scores({"score": 0.0, "source": "user"}), feedback_scores({"score": None})
    ({'feedback': 0.0}, {})
    """
    score = body.get("score")
    if score is None or not math.isfinite(float(score)):
        return {}
    if body.get("source") == "judge":
        label = str(body.get("label") or "score")
        return {f"judge_{label}": float(score)}
    return {"feedback": float(score)}


def turn_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The new input of a chat turn: non-system messages after the last assistant message."""
    start = 0
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            start = i + 1
    parts = [
        str(m.get("content") or "")
        for m in messages[start:]
        if m.get("role") not in ("system", "assistant")
    ]
    return "\n".join(p for p in parts if p.strip())


def _clip_text(text: str) -> str:
    return text[:MAX_TEXT_CHARS]


@dataclass
class _Work:
    """Per-item scratch of one batch: texts to run and the results as they come."""

    item: SinkItem
    kind: str
    body: Mapping[str, Any]
    embed: dict[str, str] = field(default_factory=dict)  # field -> text
    toxicity_text: str | None = None
    documents: list[str] = field(default_factory=list)
    vectors: dict[str, Vector] = field(default_factory=dict)
    doc_vectors: Vector | None = None
    scores: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int | None = None


class Enricher:
    """Scores micro-batches of events; call it with ``list[SinkItem]``.

    ``embedder``: vectors for every text. ``toxicity``: scores prompts and completions (None:
    not scored). ``injection``: scores prompts and retrieved documents; used through
    ``score_vectors`` on the batch's embeddings when it has that method and was built on the
    same embedder version, else through ``score``. ``counter`` and ``prices``: tokens and cost.
    ``contexts``: the trace state of earlier batches. ``clock``: the ``scored_at`` time.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        toxicity: Scorer | None,
        injection: Scorer | None,
        counter: TokenCounter,
        prices: PriceTable,
        contexts: ContextLookup = no_context,
        max_documents: int = DEFAULT_MAX_DOCUMENTS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.embedder = embedder
        self.toxicity = toxicity
        self.injection = injection
        self.counter = counter
        self.prices = prices
        self.contexts = contexts
        self.max_documents = max_documents
        self.clock = clock
        probe = getattr(injection, "score_vectors", None)
        embedder_version = getattr(getattr(injection, "_embedder", None), "version", None)
        self._probe: Callable[[Vector], npt.NDArray[np.float64]] | None = (
            probe if callable(probe) and embedder_version == embedder.version else None
        )
        self.versions: dict[str, str] = {"embedding": embedder.version}
        if toxicity is not None:
            self.versions["toxicity"] = toxicity.version
        if injection is not None:
            self.versions["injection"] = injection.version
        self.texts_embedded = 0  # running count, for benchmarks and logs

    def __call__(self, items: list[SinkItem]) -> list[SinkItem]:
        ordered = sorted(items, key=lambda i: (i.topic, i.partition, i.offset))
        work = [self._plan(item) for item in ordered]
        self._embed(work)
        self._score_toxicity(work)
        self._score_injection(work)
        self._score_retrievals(work)
        scored_at = self.clock()
        contexts: dict[str, TraceContext] = {}
        out = []
        for w in work:
            trace_id = str(w.item.record["trace_id"])
            if trace_id not in contexts:
                contexts[trace_id] = self.contexts(trace_id) or TraceContext()
            scored = self._finish(w, contexts[trace_id], scored_at)
            contexts[trace_id] = contexts[trace_id].updated(scored)
            out.append(w.item._replace(scores=scored))
        return out

    # -- planning -----------------------------------------------------------------------------

    def _plan(self, item: SinkItem) -> _Work:
        kind = event_type(item.record)
        body = event_body(item.record)
        w = _Work(item, kind, body)
        w.embed, w.documents = _texts(kind, body, self.max_documents)
        w.toxicity_text = w.embed.get("prompt") or w.embed.get("completion")
        if kind == "prompt":
            messages = body.get("messages") or []
            w.prompt_tokens = self.counter.count_messages(messages, body.get("model"))
        return w

    # -- model calls, once per batch ------------------------------------------------------------

    def _embed(self, work: list[_Work]) -> None:
        texts: dict[str, int] = {}
        for w in work:
            for text in (*w.embed.values(), *w.documents):
                texts.setdefault(text, len(texts))
        if not texts:
            return
        vectors = self.embedder.embed(list(texts))
        self.texts_embedded += len(texts)
        for w in work:
            w.vectors = {name: vectors[texts[text]] for name, text in w.embed.items()}
            if w.documents:
                w.doc_vectors = vectors[[texts[t] for t in w.documents]]

    def _score_toxicity(self, work: list[_Work]) -> None:
        if self.toxicity is None:
            return
        targets = [w for w in work if w.toxicity_text]
        if not targets:
            return
        scores = self.toxicity.score([w.toxicity_text or "" for w in targets])
        for w, score in zip(targets, scores, strict=True):
            w.scores["toxicity"] = float(score)

    def _score_injection(self, work: list[_Work]) -> None:
        if self.injection is None:
            return
        prompts = [w for w in work if w.kind == "prompt" and "prompt" in w.vectors]
        retrievals = [w for w in work if w.doc_vectors is not None]
        if self._probe is not None:
            if prompts:
                probs = self._probe(np.stack([w.vectors["prompt"] for w in prompts]))
                for w, p in zip(prompts, probs, strict=True):
                    w.scores["injection"] = float(p)
            for w in retrievals:
                assert w.doc_vectors is not None
                w.scores["injection_documents_max"] = float(np.max(self._probe(w.doc_vectors)))
            return
        if prompts:
            probs_list = self.injection.score([w.embed["prompt"] for w in prompts])
            for w, p in zip(prompts, probs_list, strict=True):
                w.scores["injection"] = float(p)
        for w in retrievals:
            w.scores["injection_documents_max"] = max(self.injection.score(w.documents))

    def _score_retrievals(self, work: list[_Work]) -> None:
        targets = [w for w in work if w.kind == "retrieval" and "query" in w.vectors]
        for w in work:
            if w.kind == "retrieval":
                documents = w.body.get("documents") or []
                w.scores["retrieval_documents"] = float(len(documents))
                w.scores["retrieval_empty"] = float(not documents)
        if not targets:
            return
        dim = self.embedder.dim
        qualities = retrieval_quality_batch(
            np.stack([w.vectors["query"] for w in targets]),
            [w.doc_vectors if w.doc_vectors is not None else np.zeros((0, dim)) for w in targets],
        )
        for w, quality in zip(targets, qualities, strict=True):
            for name, value in quality.scores().items():
                if name.startswith("retrieval_similarity"):
                    w.scores[name] = value

    # -- per item, in offset order ---------------------------------------------------------------

    def _finish(self, w: _Work, context: TraceContext, scored_at: datetime) -> Scored:
        versions = {
            family: version
            for family, version in self.versions.items()
            if (family == "embedding" and (w.vectors or w.documents))
            or (family == "toxicity" and "toxicity" in w.scores)
            or (family == "injection" and {"injection", "injection_documents_max"} & set(w.scores))
        }
        common: dict[str, Any] = {
            "embeddings": w.vectors,
            "embedding_model": self.embedder.version if w.vectors else None,
            "scored_at": scored_at,
        }
        if w.kind == "prompt":
            return Scored(
                scores=w.scores,
                scorer_versions=versions,
                prompt_tokens=w.prompt_tokens,
                **common,
            )
        if w.kind == "retrieval":
            # No documents (or none with text) is a context too: the latest retrieval's.
            empty = np.zeros((0, self.embedder.dim), dtype=np.float32)
            return Scored(
                scores=w.scores,
                scorer_versions=versions,
                context_vectors=w.doc_vectors if w.doc_vectors is not None else empty,
                **common,
            )
        if w.kind == "feedback":
            w.scores.update(feedback_scores(w.body))
        if w.kind != "completion":
            return Scored(scores=w.scores, scorer_versions=versions, **common)
        if context.documents is not None and len(context.documents) and "completion" in w.vectors:
            grounded = groundedness_batch(w.vectors["completion"][None, :], [context.documents])[0]
            w.scores.update(grounded.scores())
        tokens = self._tokens(w, context)
        versions["tokens"] = tokens.source
        cost = None
        table_version = None
        if tokens.input is not None and tokens.output is not None:
            priced = self.prices.cost(
                w.body.get("model"), tokens.input, tokens.output, tokens.cached
            )
            cost, table_version = priced.usd, priced.table_version
        return Scored(
            scores=w.scores,
            scorer_versions=versions,
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cached_tokens=tokens.cached,
            token_source=tokens.source,
            cost_usd=cost,
            price_table_version=table_version,
            **common,
        )

    def _tokens(self, w: _Work, context: TraceContext) -> _Tokens:
        body = w.body
        model = body.get("model")
        sources = []
        input_tokens = body.get("input_tokens")
        if input_tokens is None:
            input_tokens = context.prompt_tokens
            sources.append("input:prompt" if input_tokens is not None else "input:unknown")
        output_tokens = body.get("output_tokens")
        if output_tokens is None:
            output_tokens = self.counter.count(str(body.get("text") or ""), model)
            sources.append(f"output:{self.counter.method(model)}")
        cached = body.get("cached_tokens")
        if cached is not None and input_tokens is not None and cached > input_tokens:
            cached = None  # cannot be billed as cached; the cost then prices them as input
        return _Tokens(input_tokens, output_tokens, cached, ",".join(sources) or "usage")


@dataclass(frozen=True)
class _Tokens:
    input: int | None
    output: int | None
    cached: int | None
    source: str


def _texts(
    kind: str, body: Mapping[str, Any], max_documents: int
) -> tuple[dict[str, str], list[str]]:
    """The texts of one event worth embedding: by field, and the retrieved documents."""
    embed: dict[str, str] = {}
    documents: list[str] = []
    if kind == "prompt":
        embed["prompt"] = _clip_text(turn_text(body.get("messages") or []))
    elif kind == "retrieval":
        embed["query"] = _clip_text(str(body.get("query") or ""))
        documents = [
            _clip_text(str(d["text"]))
            for d in (body.get("documents") or [])
            if d.get("text") and str(d["text"]).strip()
        ][:max_documents]
    elif kind == "completion":
        embed["completion"] = _clip_text(str(body.get("text") or ""))
    return {k: v for k, v in embed.items() if v.strip()}, documents


def texts_of(items: Iterable[SinkItem], max_documents: int = DEFAULT_MAX_DOCUMENTS) -> list[str]:
    """Every distinct text the enricher would embed for ``items``: the embedding model's share
    of the work, for benchmarks that compare the pipeline with the model alone."""
    seen: dict[str, None] = {}
    for item in items:
        embed, documents = _texts(event_type(item.record), event_body(item.record), max_documents)
        for text in (*embed.values(), *documents):
            seen.setdefault(text, None)
    return list(seen)


__all__ = [
    "DEFAULT_MAX_DOCUMENTS",
    "ContextLookup",
    "Enricher",
    "TraceContext",
    "no_context",
    "texts_of",
    "turn_text",
]
