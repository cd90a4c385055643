"""LoRA training with PEFT: chat-formatted examples, loss on the answer tokens only.

Each example becomes the tokens of its prompt and its answer: through the tokenizer's chat
template when it has one (the prompt with the generation prompt, then what the template adds
for the assistant turn), else the prompt's text and a newline, then the answer and the end
token. Labels are -100 on the prompt, so the loss (and the held-out loss) is the mean
negative log-likelihood of the answer tokens. Over-long examples keep the answer's start and
the prompt's end.

Training is a plain torch loop (AdamW on the adapter's weights, gradient clipping, seeded data
order): the job needs exact control of the masking, the step and wall-time bounds and the
before/after evaluation on the same tokens, which transformers' ``Trainer`` would wrap in its
own output folders, logging and ``accelerate`` state. It stops at ``max_steps`` or once
``max_seconds`` have passed, whichever comes first (the time is checked before each step, so
the last step may end past it). torch and peft are imported when a function needs them, so
importing this module stays cheap for a worker that may never train.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from undertow.services.finetune.dataset import Example, FineTuneError, InvalidParameter

if TYPE_CHECKING:
    import torch

IGNORE: int = -100
"""The label of tokens that carry no loss (the prompt, padding)."""


class TrainingError(FineTuneError):
    """The adapter could not be trained or saved."""


class Progress(Protocol):
    """Called after every training step."""

    def __call__(self, step: int, total: int, loss: float, elapsed: float) -> None: ...


@dataclass(frozen=True)
class LoraSpec:
    """The adapter and its training budget.

    ``target_modules`` None picks PEFT's defaults for the model type (``q_proj``/``v_proj``
    for llama-style models, ``c_attn`` for GPT-2), else the usual attention projections
    found in the model. ``max_length`` caps tokens per example.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4
    eval_batch_size: int = 8
    max_steps: int = 200
    max_seconds: float = 600.0
    max_length: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("rank", self.rank >= 1, "an integer >= 1"),
            ("alpha", self.alpha >= 1, "an integer >= 1"),
            ("dropout", 0.0 <= self.dropout < 1.0, "a number from 0 to below 1"),
            ("learning_rate", self.learning_rate >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "a number > 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1"),
            ("max_steps", self.max_steps >= 0, "an integer >= 0"),
            ("max_seconds", self.max_seconds >= 0, "a number >= 0"),
            ("max_length", self.max_length >= 16, "an integer >= 16"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InvalidParameter(
                    f"parameter {name!r}: expected {expected}, got {getattr(self, name)!r}"
                )
        if self.target_modules is not None and not self.target_modules:
            raise InvalidParameter("parameter 'target_modules': expected at least one name")


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and their labels (``IGNORE`` on the prompt)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class TrainResult:
    """What a training run did; ``model`` is the PEFT model holding the trained adapter."""

    model: Any
    steps: int
    max_steps: int
    seconds: float
    eval_seconds: float
    loss_before: float
    loss_after: float
    last_train_loss: float | None
    stopped_by: Literal["max_steps", "max_seconds"]
    target_modules: tuple[str, ...]
    train_examples: int
    held_out_examples: int
    held_out_tokens: int
    skipped_examples: int

    @property
    def improvement(self) -> float:
        """Relative fall of the held-out loss: (before - after) / before."""
        if self.loss_before <= 0:
            return 0.0
        return (self.loss_before - self.loss_after) / self.loss_before

    def improved(self, min_relative: float) -> bool:
        """The held-out loss fell, by at least ``min_relative`` of its value before."""
        return self.loss_after < self.loss_before and self.improvement >= min_relative


# --- encoding --------------------------------------------------------------------------------


def _ids(encoded: Any) -> list[int]:
    ids = (
        encoded["input_ids"]
        if isinstance(encoded, Mapping) or hasattr(encoded, "keys")
        else encoded
    )
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Encoded | None:
    """The example's tokens and labels, or None when no answer token fits."""
    messages = example.prompt_messages()
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        prompt_ids = _ids(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        )
        full_ids = _ids(
            tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": example.completion}],
                tokenize=True,
                return_dict=True,
            )
        )
        if full_ids[: len(prompt_ids)] == prompt_ids:
            answer_ids = full_ids[len(prompt_ids) :]
        else:  # a template that rewrites earlier turns: tokenize the answer alone
            answer_ids = _ids(tokenizer(example.completion, add_special_tokens=False)) + eos
    else:
        prompt_text = "\n".join(m["content"] for m in messages) + "\n"
        prompt_ids = _ids(tokenizer(prompt_text))
        answer_ids = _ids(tokenizer(example.completion, add_special_tokens=False)) + eos
    if len(prompt_ids) + len(answer_ids) > max_length:
        answer_ids = answer_ids[: max_length - min(len(prompt_ids), max_length // 2)]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(answer_ids)) :]
    if not answer_ids:
        return None
    return Encoded(
        input_ids=tuple(prompt_ids + answer_ids),
        labels=tuple([IGNORE] * len(prompt_ids) + answer_ids),
    )


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> tuple[list[Encoded], int]:
    """The encoded examples and how many were skipped (no answer token fitted)."""
    encoded = [encode_example(tokenizer, e, max_length) for e in examples]
    kept = [e for e in encoded if e is not None]
    return kept, len(encoded) - len(kept)


def _collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # padding is masked out and carries no loss: any id will do


def _loss_sum(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's answer tokens, and their count."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    out = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    )
    logits = out.logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:].to(device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((targets != IGNORE).sum())


def encoded_loss(model: Any, encoded: Sequence[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean answer-token loss over ``encoded`` (token-weighted, independent of batching)."""
    import torch

    if not encoded:
        raise TrainingError("expected at least one held-out example with an answer token, got 0")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                loss, n = _loss_sum(model, _collate(encoded[start : start + batch_size], pad_id))
                total += float(loss)
                count += n
    finally:
        model.train(was_training)
    return total / count


def heldout_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int = 512,
    batch_size: int = 8,
) -> float:
    """Mean loss of ``model`` on the answer tokens of ``examples`` (as training encodes them)."""
    encoded, _ = encode_examples(tokenizer, examples, max_length)
    return encoded_loss(model, encoded, _pad_id(tokenizer), batch_size)


# --- the adapter -----------------------------------------------------------------------------

# Attention projections by family, for model types PEFT has no default for.
_FALLBACK_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("c_attn",),
    ("query", "value"),
    ("query_key_value",),
    ("Wqkv",),
)


def target_modules_for(model: Any) -> tuple[str, ...]:
    """PEFT's default LoRA targets for the model type, else attention projections found in
    the model's linear layers."""
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers.pytorch_utils import Conv1D

    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if known:
        return tuple(known)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    for candidate in _FALLBACK_TARGETS:
        if all(c in names for c in candidate):
            return candidate
    raise TrainingError(
        f"expected attention projections to adapt in model type {model_type!r}, found linear "
        f"layers {sorted(names)[:20]}; set target_modules"
    )


def _uses_conv1d(model: Any, targets: Sequence[str]) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules()
    )


def train_adapter(
    model: Any,
    tokenizer: Any,
    train: Sequence[Example],
    held_out: Sequence[Example],
    spec: LoraSpec,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``train``; measure the held-out loss before and after.

    ``model`` gets LoRA layers injected in place (PEFT); ``result.model`` is the PEFT model.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    train_encoded, skipped_train = encode_examples(tokenizer, train, spec.max_length)
    held_encoded, skipped_held = encode_examples(tokenizer, held_out, spec.max_length)
    if not train_encoded:
        raise TrainingError(
            f"expected training examples with an answer token within {spec.max_length} tokens, "
            f"got none of {len(train)}"
        )
    pad_id = _pad_id(tokenizer)
    began_eval = time.perf_counter()
    loss_before = encoded_loss(model, held_encoded, pad_id, spec.eval_batch_size)
    eval_seconds = time.perf_counter() - began_eval

    targets = spec.target_modules or target_modules_for(model)
    torch.manual_seed(spec.seed)  # the LoRA A matrices start random
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        fan_in_fan_out=_uses_conv1d(model, targets),
        task_type=TaskType.CAUSAL_LM,
    )
    try:
        peft_model: Any = get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingError(f"cannot add LoRA layers to {list(targets)}: {exc}") from exc
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    order = random.Random(spec.seed)
    queue: list[int] = []
    steps, last_loss = 0, None
    stopped_by: Literal["max_steps", "max_seconds"] = "max_steps"
    peft_model.train()
    began = time.perf_counter()
    while steps < spec.max_steps:
        if time.perf_counter() - began >= spec.max_seconds:
            stopped_by = "max_seconds"
            break
        if not queue:
            queue = list(range(len(train_encoded)))
            order.shuffle(queue)
        picked, queue = queue[: spec.batch_size], queue[spec.batch_size :]
        loss_sum, count = _loss_sum(
            peft_model, _collate([train_encoded[i] for i in picked], pad_id)
        )
        loss = loss_sum / max(count, 1)
        last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            raise TrainingError(
                f"expected a finite training loss, got {last_loss} at step {steps + 1}"
            )
        cast(Any, loss).backward()  # torch's stubs leave backward untyped
        torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        if progress is not None:
            progress(steps, spec.max_steps, last_loss, time.perf_counter() - began)
    seconds = time.perf_counter() - began
    peft_model.eval()

    began_eval = time.perf_counter()
    loss_after = encoded_loss(peft_model, held_encoded, pad_id, spec.eval_batch_size)
    eval_seconds += time.perf_counter() - began_eval
    return TrainResult(
        model=peft_model,
        steps=steps,
        max_steps=spec.max_steps,
        seconds=seconds,
        eval_seconds=eval_seconds,
        loss_before=loss_before,
        loss_after=loss_after,
        last_train_loss=last_loss,
        stopped_by=stopped_by,
        target_modules=tuple(targets),
        train_examples=len(train_encoded),
        held_out_examples=len(held_encoded),
        held_out_tokens=sum(e.answer_tokens for e in held_encoded),
        skipped_examples=skipped_train + skipped_held,
    )


METADATA_FILE = "undertow_fine_tune.json"
"""Written beside the adapter: the figures of the run that made it."""


def save_if_improved(
    result: TrainResult,
    output_dir: Path,
    *,
    min_improvement: float,
    metadata: Mapping[str, str] | None = None,
) -> Path | None:
    """Save the adapter (PEFT ``save_pretrained``) to ``output_dir`` only when the held-out
    loss fell by at least ``min_improvement`` (relative); returns the folder, or None.

    The folder is written beside ``output_dir`` and renamed into place, so a reader never
    sees half an adapter; an existing non-empty ``output_dir`` is an error.
    """
    if not result.improved(min_improvement):
        return None
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise TrainingError(f"expected an absent or empty adapter folder, got {output_dir}")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.{os.getpid()}.partial"
    try:
        result.model.save_pretrained(staging)
        (staging / METADATA_FILE).write_text(
            json.dumps(dict(metadata or {}), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        os.replace(staging, output_dir)
    except OSError as exc:
        raise TrainingError(f"could not save the adapter to {output_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


__all__ = [
    "IGNORE",
    "METADATA_FILE",
    "Encoded",
    "LoraSpec",
    "Progress",
    "TrainResult",
    "TrainingError",
    "encode_example",
    "encode_examples",
    "encoded_loss",
    "heldout_loss",
    "save_if_improved",
    "target_modules_for",
    "train_adapter",
]
