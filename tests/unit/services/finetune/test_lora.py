"""LoRA training on a tiny GPT-2 built from a config, with a BPE tokenizer trained in-process:
the held-out loss falls and the saved adapter reloads to the same loss; a run that cannot
improve saves nothing; the wall-time bound stops training; only answer tokens carry loss."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tests.tiny_models import ALL_LINEAR, EOS, colour_pairs, tiny_gpt2, tiny_tokenizer
from undertow.services.finetune.dataset import Example, InvalidParameter
from undertow.services.finetune.lora import (
    IGNORE,
    METADATA_FILE,
    LoraSpec,
    encode_example,
    heldout_loss,
    save_if_improved,
    target_modules_for,
    train_adapter,
)


def examples() -> list[Example]:
    """A small repetitive set: the answer repeats the question's words in a fixed frame."""
    return [
        Example(prompt=q, completion=a, event_id=f"e{i}") for i, (q, a) in enumerate(colour_pairs())
    ]


def split_examples() -> tuple[list[Example], list[Example]]:
    data = examples()
    held = [e for i, e in enumerate(data) if i % 6 == 0]
    return [e for e in data if e not in held], held


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on a small shared machine two threads contend and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    made: PreTrainedTokenizerFast = tiny_tokenizer()
    return made


def spec(**changes: Any) -> LoraSpec:
    fields: dict[str, Any] = {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.0,
        "learning_rate": 1e-2,
        "batch_size": 8,
        "max_steps": 40,
        "max_seconds": 300.0,
        "max_length": 64,
        "seed": 0,
    }
    return LoraSpec(**{**fields, **changes})


def test_training_lowers_the_heldout_loss_and_the_saved_adapter_reloads(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    base_dir = tmp_path / "base"
    model = tiny_gpt2(tokenizer)
    model.save_pretrained(base_dir)
    train, held = split_examples()
    seen: list[tuple[int, int, float, float]] = []

    result = train_adapter(
        model,
        tokenizer,
        train,
        held,
        spec(target_modules=ALL_LINEAR),
        progress=lambda step, total, loss, elapsed: seen.append((step, total, loss, elapsed)),
    )

    assert (result.steps, result.stopped_by, result.target_modules) == (40, "max_steps", ALL_LINEAR)
    assert [s[:2] for s in seen] == [(i, 40) for i in range(1, 41)]
    assert [s[3] for s in seen] == sorted(s[3] for s in seen)  # elapsed only grows
    assert seen[-1][2] < seen[0][2]
    assert result.loss_after < 0.9 * result.loss_before  # a clear fall, not noise
    assert result.improved(0.1) and result.improvement == pytest.approx(
        1 - result.loss_after / result.loss_before
    )
    assert (result.train_examples, result.held_out_examples) == (len(train), len(held))

    saved = save_if_improved(
        result, tmp_path / "adapter", min_improvement=0.1, metadata={"app": "zoo"}
    )
    assert saved == tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", METADATA_FILE} <= {
        p.name for p in saved.iterdir()
    }
    assert json.loads((saved / METADATA_FILE).read_text()) == {"app": "zoo"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging

    fresh = AutoModelForCausalLM.from_pretrained(base_dir)
    assert heldout_loss(fresh, tokenizer, held, max_length=64) == pytest.approx(
        result.loss_before, rel=1e-5
    )
    reloaded = PeftModel.from_pretrained(fresh, saved)
    assert heldout_loss(reloaded, tokenizer, held, max_length=64) == pytest.approx(
        result.loss_after, rel=1e-5
    )


@pytest.mark.parametrize("changes", [{"learning_rate": 0.0}, {"max_steps": 0}])
def test_a_run_that_cannot_improve_saves_nothing(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, changes: dict[str, Any]
) -> None:
    train, held = split_examples()
    calls: list[int] = []
    result = train_adapter(
        tiny_gpt2(tokenizer),
        tokenizer,
        train,
        held,
        spec(**{"max_steps": 5, **changes}),
        progress=lambda step, *_: calls.append(step),
    )
    assert result.steps == len(calls) == (0 if changes.get("max_steps") == 0 else 5)
    assert result.loss_after == pytest.approx(result.loss_before, abs=1e-6)
    assert not result.improved(0.0) and result.improvement == pytest.approx(0.0, abs=1e-6)
    target = tmp_path / "adapter"
    assert save_if_improved(result, target, min_improvement=0.0) is None
    assert list(tmp_path.iterdir()) == []


def test_the_wall_time_bound_stops_training_first(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    train, held = split_examples()
    elapsed: list[float] = []
    limit = 1.0
    result = train_adapter(
        tiny_gpt2(tokenizer),
        tokenizer,
        train,
        held,
        spec(max_steps=1_000_000, max_seconds=limit),
        progress=lambda step, total, loss, seconds: elapsed.append(seconds),
    )
    assert result.stopped_by == "max_seconds"
    assert 0 < result.steps == len(elapsed) < 1_000_000
    # every step began before the limit; the check after the last one found it passed
    assert all(seconds < limit for seconds in elapsed[:-1])
    assert result.seconds >= limit


def test_an_existing_adapter_folder_is_not_overwritten(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    train, held = split_examples()
    result = train_adapter(tiny_gpt2(tokenizer), tokenizer, train, held, spec(max_steps=10))
    assert result.improved(0.0)
    occupied = tmp_path / "adapter"
    occupied.mkdir()
    (occupied / "other.txt").write_text("someone else's")
    with pytest.raises(Exception, match="expected an absent or empty adapter folder"):
        save_if_improved(result, occupied, min_improvement=0.0)
    assert [p.name for p in occupied.iterdir()] == ["other.txt"]


# --- encoding ---------------------------------------------------------------------------------


def test_only_the_answer_carries_loss_with_a_chat_template(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    chat: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer.backend_tokenizer, eos_token=EOS
    )
    chat.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}" + EOS + "{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    example = Example(
        prompt="what colour is the red fox?",
        completion="the red fox is red.",
        messages=(("system", "be brief"), ("user", "what colour is the red fox?")),
    )
    encoded = encode_example(chat, example, max_length=128)
    assert encoded is not None
    answer = [
        t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE
    ]
    prompt = [
        t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE
    ]
    assert chat.decode(answer) == "the red fox is red." + EOS
    assert chat.decode(prompt) == f"<system>be brief{EOS}<user>{example.prompt}{EOS}<assistant>"
    assert encoded.labels[len(prompt) :] == encoded.input_ids[len(prompt) :]


def test_without_a_template_the_prompt_is_text_and_long_examples_keep_the_answer_start(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    example = Example(prompt="what colour is the red fox? " * 20, completion="the red fox " * 20)
    full = encode_example(tokenizer, example, max_length=1000)
    cut = encode_example(tokenizer, example, max_length=32)
    assert full is not None and cut is not None
    assert full.input_ids[-1] == tokenizer.eos_token_id
    assert len(cut.input_ids) == 32
    n_prompt = sum(1 for label in cut.labels if label == IGNORE)
    full_prompt = sum(1 for label in full.labels if label == IGNORE)
    assert n_prompt == 16  # half the room goes to the prompt's end, half to the answer's start
    assert cut.input_ids[:n_prompt] == full.input_ids[full_prompt - 16 : full_prompt]
    assert cut.input_ids[n_prompt:] == full.input_ids[full_prompt : full_prompt + 16]


def test_target_modules_are_picked_for_gpt2_and_llama_style_models(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    assert target_modules_for(tiny_gpt2(tokenizer)) == ("c_attn",)
    llama = LlamaForCausalLM(  # type: ignore[no-untyped-call]
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    assert target_modules_for(llama) == ("q_proj", "v_proj")


def test_a_spec_refuses_what_it_cannot_train_with() -> None:
    with pytest.raises(InvalidParameter, match="'rank': expected an integer >= 1, got 0"):
        LoraSpec(rank=0)
    with pytest.raises(InvalidParameter, match="'dropout': expected a number from 0 to below 1"):
        LoraSpec(dropout=1.0)
    with pytest.raises(InvalidParameter, match="'target_modules': expected at least one name"):
        LoraSpec(target_modules=())
