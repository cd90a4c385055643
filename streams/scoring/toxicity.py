"""Toxicity scorers: a linear profanity model offline, Detoxify's transformers in production.

``toxicity.profanity`` is alt-profanity-check's linear model (TF-IDF + linear SVM, calibrated):
it ships in its registry package, runs at tens of thousands of texts a second and is sensible on
insults and slurs, but misses implicit threats and context. ``toxicity.detoxify`` runs a Detoxify
classifier (a transformers sequence classifier with one sigmoid per label) and returns the
``toxicity`` label. It is built on plain transformers rather than the ``detoxify`` package, which
fetches its checkpoints from GitHub releases at run time: here weights come only from a
configured local path or the local caches, and their absence is a clear ScoringError.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from undertow.streams.scoring.base import Scorer, ScoringError, register


@register("toxicity.profanity")
class ProfanityScorer(Scorer):
    """Probability that a text is profane, from alt-profanity-check's linear model."""

    def __init__(self) -> None:
        try:
            import profanity_check
        except ImportError as exc:
            raise ScoringError(
                "toxicity.profanity needs alt-profanity-check (pip install 'undertow[scoring]')"
            ) from exc
        except Exception as exc:  # its import unpickles the model with joblib
            raise ScoringError(f"alt-profanity-check could not load its model: {exc}") from exc
        self._predict_prob = profanity_check.predict_prob
        self.version = f"alt-profanity-check=={metadata.version('alt-profanity-check')}"

    def score(self, texts: Sequence[str]) -> list[float]:
        if len(texts) == 0:
            return []
        try:
            probs = self._predict_prob(list(texts))
        except Exception as exc:
            raise ScoringError(f"profanity scoring of {len(texts)} texts failed") from exc
        return [float(p) for p in np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)]


# Where Detoxify's own loader would have cached each checkpoint (torch hub's checkpoints folder).
DETOXIFY_CHECKPOINTS = {
    "original": "toxic_original-c1212f89.ckpt",
    "unbiased": "toxic_debiased-c7548aa0.ckpt",
    "multilingual": "multilingual_debiased-0b549669.ckpt",
    "original-small": "original-albert-0e1d6498.ckpt",
    "unbiased-small": "unbiased-albert-c8519128.ckpt",
}
# Detoxify renames some Jigsaw class names; the same renaming applies to HF label names.
_LABEL_NAMES = {
    "toxic": "toxicity",
    "identity_hate": "identity_attack",
    "severe_toxic": "severe_toxicity",
}
_MAX_LENGTH = 512


@register("toxicity.detoxify")
class DetoxifyScorer(Scorer):
    """Detoxify's toxicity probability, from local weights only.

    Weights come from, in this order:

    - ``model_path``: a transformers directory (config, weights, tokenizer), or a hub name
      already in the local Hugging Face cache (e.g. ``unitary/toxic-bert``);
    - ``checkpoint``: a Detoxify ``.ckpt`` file (a dict with ``config`` and ``state_dict``);
    - ``model_type`` (default ``original``): Detoxify's checkpoint for that type in torch hub's
      cache, where ``detoxify`` itself saves downloads.

    A ``.ckpt`` holds only weights: the architecture's config and tokenizer come from
    ``config_path`` (Detoxify's ``huggingface_config_path``) or, failing that, from the local
    Hugging Face cache under the checkpoint's base model name. ``.ckpt`` files are read with
    ``torch.load(weights_only=True)``; ``trust_pickle=True`` allows full unpickling for files
    from a trusted source that need it.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        checkpoint: str | Path | None = None,
        model_type: str = "original",
        config_path: str | Path | None = None,
        label: str = "toxicity",
        label_index: int | None = None,
        activation: Literal["sigmoid", "softmax"] = "sigmoid",
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int | None = None,
        trust_pickle: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ScoringError(f"batch_size must be at least 1, got {batch_size}")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ScoringError(
                "toxicity.detoxify needs torch and transformers (pip install 'undertow[model]')"
            ) from exc
        self._torch = torch
        if model_path is not None:
            model, tokenizer, names, source = _load_directory(transformers, model_path)
        else:
            if checkpoint is None:
                checkpoint = _cached_checkpoint(torch, model_type)
            model, tokenizer, names, source = _load_checkpoint(
                torch, transformers, Path(checkpoint), config_path, trust_pickle
            )
        if label_index is None:
            if label not in names:
                raise ScoringError(f"the model {source!r} has no label {label!r}; it has {names}")
            label_index = names.index(label)
        elif not 0 <= label_index < len(names):
            raise ScoringError(f"label_index {label_index} is outside the model's {len(names)}")
        self._model = model.to(device).eval()
        self._tokenizer = tokenizer
        self._index = label_index
        self._activation = activation
        self._lock = threading.Lock()  # fast tokenizers fail if two threads share one
        self.device = device
        self.batch_size = batch_size
        limits = [_MAX_LENGTH, getattr(model.config, "max_position_embeddings", _MAX_LENGTH)]
        if isinstance(getattr(tokenizer, "model_max_length", None), int):
            limits.append(tokenizer.model_max_length)
        self.max_length = max_length or min(limits)
        self.labels = names
        self.version = f"detoxify:{source}:{names[label_index]}"

    def score(self, texts: Sequence[str]) -> list[float]:
        if len(texts) == 0:
            return []
        torch = self._torch
        out: list[float] = []
        try:
            with self._lock, torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    chunk = list(texts[start : start + self.batch_size])
                    inputs = self._tokenizer(
                        chunk,
                        truncation=True,
                        padding=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(self.device)
                    logits = self._model(**inputs).logits.float()
                    if self._activation == "sigmoid":
                        probs = torch.sigmoid(logits)
                    else:
                        probs = torch.softmax(logits, dim=-1)
                    out.extend(probs[:, self._index].clamp(0.0, 1.0).cpu().tolist())
        except Exception as exc:
            raise ScoringError(f"toxicity scoring of {len(texts)} texts failed") from exc
        return out


def _label_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", len(id2label)))
    return [
        _LABEL_NAMES.get(str(id2label.get(i, i)), str(id2label.get(i, i))) for i in range(count)
    ]


def _load_directory(transformers: Any, model_path: str | Path) -> tuple[Any, Any, list[str], str]:
    """A transformers sequence classifier from a directory or the local hub cache only."""
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(model_path), local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(model_path), local_files_only=True
        )
    except Exception as exc:
        raise ScoringError(
            f"no local Detoxify/transformers classifier at {str(model_path)!r} (looked in that "
            f"directory and the local Hugging Face cache; nothing is downloaded): {exc}"
        ) from exc
    return model, tokenizer, _label_names(model.config), Path(str(model_path)).name


def _cached_checkpoint(torch: Any, model_type: str) -> Path:
    """Detoxify's checkpoint for ``model_type`` in torch hub's cache, where Detoxify saves it."""
    try:
        filename = DETOXIFY_CHECKPOINTS[model_type]
    except KeyError:
        raise ScoringError(
            f"unknown Detoxify model_type {model_type!r}; known: {sorted(DETOXIFY_CHECKPOINTS)}"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise ScoringError(
            f"Detoxify weights for {model_type!r} are not available offline: expected {path}. "
            "Set model_path to a local transformers classifier directory, or checkpoint to a "
            "Detoxify .ckpt file (with config_path for its config and tokenizer)"
        )
    return path


def _load_checkpoint(
    torch: Any,
    transformers: Any,
    checkpoint: Path,
    config_path: str | Path | None,
    trust_pickle: bool,
) -> tuple[Any, Any, list[str], str]:
    """Rebuild a Detoxify ``.ckpt``: its arch from local config files, then its state dict."""
    if not checkpoint.is_file():
        raise ScoringError(f"expected a Detoxify checkpoint file at {checkpoint}, found none")
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        raise ScoringError(
            f"could not read the checkpoint {checkpoint} (with weights_only={not trust_pickle}; "
            "pass trust_pickle=True only for files from a trusted source)"
        ) from exc
    try:
        arch = loaded["config"]["arch"]["args"]
        classes = [_LABEL_NAMES.get(c, c) for c in loaded["config"]["dataset"]["args"]["classes"]]
        state_dict = loaded["state_dict"]
        model_class = getattr(transformers, arch["model_name"])
        tokenizer_name = arch.get("tokenizer_name", "AutoTokenizer")
        tokenizer_class = getattr(transformers, tokenizer_name, transformers.AutoTokenizer)
        source = str(config_path) if config_path is not None else str(arch["model_type"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ScoringError(
            f"{checkpoint} is not a Detoxify checkpoint: expected config.arch.args "
            "(model_type, model_name, tokenizer_name), config.dataset.args.classes and state_dict"
        ) from exc
    try:
        config = model_class.config_class.from_pretrained(
            source, num_labels=len(classes), local_files_only=True
        )
        tokenizer = tokenizer_class.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        raise ScoringError(
            f"the config and tokenizer for {checkpoint.name} are not available offline at "
            f"{source!r}; set config_path to a directory holding them: {exc}"
        ) from exc
    model = model_class(config)
    state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise ScoringError(f"{checkpoint.name} lacks weights the model needs: {missing[:5]}")
    return model, tokenizer, classes, checkpoint.name
