"""The fine-tune worker: a ``fine_tune`` request trains a LoRA adapter on warehouse data and,
only if its held-out loss improved, registers it as a candidate version of the target model.

The request's target is the registry model name; its parameters are those of
:class:`~undertow.services.finetune.job.FineTuneParams` (``app`` defaults to the request's
app; ``base_model`` to the target's serving version's base). The adapter is written under
``finetune_output_dir/<target>/<request id>``; the result carries every figure of the run
(examples read and dropped per reason, steps, seconds, loss before and after) and the
registered version. Progress goes to the log every 10 steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from undertow.services.actions.worker import ActionWorker, Outcome, Progress, WorkerContext
from undertow.services.registry.state import push_model

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class FineTuneWorker(ActionWorker):
    """Trains, evaluates and (when better) registers a LoRA adapter."""

    action_type = "fine_tune"

    def __init__(self, context: WorkerContext) -> None:
        super().__init__(context)
        self.max_seconds = context.settings.finetune_max_seconds + 600
        self._embedder: Any = None

    def _embed(self, texts: Any) -> Any:
        if self._embedder is None:
            from undertow.streams.scoring.embedding import SentenceTransformerEmbedder

            self._embedder = SentenceTransformerEmbedder()
        return self._embedder.embed(list(texts))

    def handle(self, request: Mapping[str, Any], progress: Progress) -> Outcome:
        from undertow.services.finetune.job import (
            FineTuneParams,
            local_base_loader,
            run_fine_tune,
        )

        settings = self.context.settings
        target = str(request["target"])
        parameters = dict(request.get("parameters") or {})
        registry = self.context.registry
        serving = registry.load().active_model(target)
        base = parameters.get("base_model") or (serving.base_model if serving else None)
        base = base or settings.finetune_base_model
        if base and base != target and not _looks_loadable(base):
            base = None  # a served name like "SmolLM2-135M-Instruct": the offline default
        if base:
            parameters["base_model"] = base
        else:
            parameters.pop("base_model", None)
        parameters.setdefault("max_steps", str(settings.finetune_max_steps))
        parameters.setdefault("max_seconds", str(settings.finetune_max_seconds))
        params = FineTuneParams.from_action(parameters, app=str(request.get("app") or ""))
        output = settings.finetune_output_dir / _SAFE.sub("_", target) / str(request["event_id"])

        def step(step: int, total: int, loss: float, elapsed: float) -> None:
            if step == 1 or step % 10 == 0 or step == total:
                progress(
                    {"step": f"{step}/{total}", "loss": f"{loss:.4f}", "seconds": f"{elapsed:.0f}"}
                )

        result = run_fine_tune(
            params,
            client=self.context.warehouse(),
            load_base=local_base_loader(settings.finetune_model_cache_dir),
            embed=self._embed,
            output_dir=output,
            progress=step,
        )
        figures = result.to_result_map()
        if not result.improved or result.adapter_path is None:
            return Outcome("skipped", f"no adapter registered: {result.reason}", figures)
        state = registry.load()
        records = push_model(
            state,
            target,
            base_model=serving.base_model if serving and serving.base_model else result.base_model,
            adapter_path=str(result.adapter_path),
            metadata={
                "source": "fine_tune",
                "request_id": str(request["event_id"]),
                "loss_before": figures["loss_before"],
                "loss_after": figures["loss_after"],
                "train_examples": figures["train_examples"],
            },
            now=self.context.now_us(),
        )
        registry.publish(records)
        version = str(records[0]["version"])
        figures["registered_version"] = version
        return Outcome(
            "succeeded",
            f"adapter registered as {target} version {version} (candidate): held-out loss "
            f"{figures['loss_before']} -> {figures['loss_after']}",
            figures,
        )


def _looks_loadable(name: str) -> bool:
    """A folder or a hub name (``org/model``), as opposed to a bare served-model name."""
    from pathlib import Path

    return "/" in name or Path(name).exists()
