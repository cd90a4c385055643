"""Quality and speed of the committed prompt-injection classifier, and of the other scorers.

.venv/bin/python bench/injection_eval.py [--batch 64] [--model-batch 16] [--limit N]

Loads ``streams/scoring/artifacts/injection_minilm_lr.json`` and scores the S-Labs test split
(in domain) and the neuralchemy core test split (out of domain) in micro-batches: AUC, and F1,
precision and recall at the artifact's threshold, with texts/s for embedding + classifier.
Then texts/s for the profanity scorer and for the embedder alone, on the same texts. One
process, CPU, the model loaded before timing starts.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from undertow.streams.scoring.base import create, create_embedder
from undertow.streams.scoring.injection import DEFAULT_ARTIFACT
from undertow.streams.scoring.train_injection import load_split, metrics


def timed_batches(
    fn: Callable[[Sequence[str]], Any], texts: list[str], batch: int
) -> tuple[list[Any], float]:
    """Results of ``fn`` over ``texts`` in batches, and the texts per second it managed."""
    out: list[Any] = []
    began = time.perf_counter()
    for start in range(0, len(texts), batch):
        out.extend(fn(texts[start : start + batch]))
    return out, len(texts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="micro-batch, texts per call")
    parser.add_argument("--model-batch", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--limit", type=int, default=None, help="texts per split (default all)")
    args = parser.parse_args()

    import torch

    embedder = create_embedder("minilm", batch_size=args.model_batch)
    injection = create("injection.minilm_lr", embedder=embedder)
    profanity = create("toxicity.profanity")
    embedder.embed(["warm up"] * 4)
    threshold = float(getattr(injection, "threshold", 0.5))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, Python {platform.python_version()}, torch {torch.__version__}"
    )
    print(f"artifact: {DEFAULT_ARTIFACT.name}, threshold {threshold:.4f}, {injection.version}")
    print(f"micro-batch: {args.batch} texts per call, {args.model_batch} per forward pass")
    every: list[str] = []
    for split in ("s-labs/test", "neuralchemy/test"):
        texts, labels = load_split(split)
        texts, labels = texts[: args.limit], labels[: args.limit]
        every += texts
        scores, rate = timed_batches(injection.score, texts, args.batch)
        figures = metrics(scores, labels, threshold)
        chars = statistics.mean(len(t) for t in texts)
        print(
            f"{split}: N {figures['n']} ({figures['positives']} injections, mean {chars:.0f} "
            f"chars), AUC {figures['auc']:.4f}, F1 {figures['f1']:.4f}, precision "
            f"{figures['precision']:.4f}, recall {figures['recall']:.4f}; "
            f"injection.minilm_lr {rate:,.0f} texts/s"
        )
    _, embed_rate = timed_batches(embedder.embed, every, args.batch)
    _, profanity_rate = timed_batches(profanity.score, every, args.batch)
    print(
        f"both splits, N {len(every)}: minilm embedding {embed_rate:,.0f} texts/s, "
        f"toxicity.profanity {profanity_rate:,.0f} texts/s"
    )


if __name__ == "__main__":
    main()
